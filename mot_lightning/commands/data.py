"""``mot data ...``: the demo corpus and the shard converters.

mot data demo [--out data/demo] [--seed 0] [--image-size 32] [--train-docs 4000] [--val-docs 96]
              [--shard-size 50] [--speech builtin|espeak]
mot data convert images      --src FOLDER    --out DIR   # name.jpg + name.txt pairs
mot data convert speech      --src FOLDER    --out DIR   # name.wav + name.txt pairs
mot data convert text        --src FILES     --out DIR [--split file|paragraph]
mot data convert interleaved --src DOCS.jsonl --out DIR
mot data inspect URLS...                                 # count layouts and problems in shards
mot data tokenize --config TRAIN.yaml --out DIR [--split train|<val set>] [--device cuda] [--batch-size 64]
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from functools import partial

from mot_lightning.modality import Modality


def _parser() -> argparse.ArgumentParser:
    from mot_lightning.data.demo import DemoConfig

    parser = argparse.ArgumentParser(prog="mot data", description="demo corpus and WebDataset shard tools")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="generate the deterministic demo corpus")
    demo.add_argument("--out", default="data/demo")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--image-size", type=int, default=32)
    demo.add_argument("--train-docs", type=int, default=DemoConfig.train_docs)
    demo.add_argument("--val-docs", type=int, default=DemoConfig.val_docs)
    demo.add_argument("--shard-size", type=int, default=DemoConfig.shard_size)
    demo.add_argument("--speech", choices=("builtin", "espeak"), default="builtin")

    convert = sub.add_parser("convert", help="convert files to tar shards")
    kinds = convert.add_subparsers(dest="kind", required=True)
    for kind, help_ in (
        ("images", "folder of image + .txt caption pairs"),
        ("speech", "folder of audio + .txt transcript pairs"),
        ("text", ".txt files (or folders of them) and .jsonl with a 'text' field"),
        ("interleaved", "JSONL of {'segments': [...]} documents with media paths"),
    ):
        p = kinds.add_parser(kind, help=help_)
        p.add_argument("--src", required=True)
        p.add_argument("--out", required=True)
        p.add_argument("--prefix", default=None, help="shard name prefix (default: the kind)")
        p.add_argument("--shard-size", type=int, default=1000, help="samples per shard")
        p.add_argument("--shard-mb", type=float, default=1000.0, help="max MB per shard")
        p.add_argument("--quiet", action="store_true", help="no progress bar (shown only on a terminal)")
        if kind == "text":
            p.add_argument("--split", choices=("file", "paragraph"), default="file")

    sub.add_parser("tokenize", add_help=False,
                   help="raw shards -> pre-tokenized shards for a training config (`mot data tokenize --help`)")

    inspect = sub.add_parser("inspect", help="read shards and count layouts and problems (no tokenizers)")
    inspect.add_argument("urls", nargs="+", help="shard paths, brace patterns or globs")
    inspect.add_argument("--image-size", type=int, default=32)
    inspect.add_argument("--quiet", action="store_true", help="no progress bar (shown only on a terminal)")
    return parser


def main(argv: list[str]) -> None:
    if argv[:1] == ["tokenize"]:  # its own parser: the data module's arguments, as `mot fit` reads them
        from mot_lightning.data.tokenize_shards import main as tokenize

        tokenize(argv[1:])
        return
    args = _parser().parse_args(argv)
    if args.command == "demo":
        _demo(args)
    elif args.command == "convert":
        _convert(args)
    else:
        _inspect(args)


def _demo(args) -> None:
    from mot_lightning.data.demo import DemoConfig, generate

    start = time.perf_counter()
    cfg = DemoConfig(
        out=args.out,
        seed=args.seed,
        image_size=args.image_size,
        train_docs=args.train_docs,
        val_docs=args.val_docs,
        shard_size=args.shard_size,
        speech=args.speech,
    )
    manifest = generate(cfg)
    print(f"demo corpus written to {args.out} in {time.perf_counter() - start:.1f} s")
    for split in ("train", "val"):
        for name, info in manifest[split].items():
            print(
                f"  {split:5s} {name:15s} {info['docs']:5d} docs  {info['shards']:3d} shards  {info['pattern']}"
            )


def _convert(args) -> None:
    from mot_lightning.data import convert

    kw = {"shard_size": args.shard_size, "shard_mb": args.shard_mb, "show_progress": not args.quiet}
    if args.kind in ("images", "speech"):
        modality = Modality.IMAGE if args.kind == "images" else Modality.SPEECH
        summary = convert.convert_pairs(args.src, args.out, modality, prefix=args.prefix or args.kind, **kw)
    elif args.kind == "text":
        summary = convert.convert_text(
            args.src, args.out, split=args.split, prefix=args.prefix or "text", **kw
        )
    else:
        summary = convert.convert_interleaved(args.src, args.out, prefix=args.prefix or "interleaved", **kw)
    print(summary)


_NAMED = 20  # problem documents listed by name


def _inspect(args) -> None:
    from mot_lightning.data.convert import progress
    from mot_lightning.data.counters import StreamCounters
    from mot_lightning.data.documents import NO_LIMITS, BadSample, contained, parse_sample
    from mot_lightning.shards.reader import shard_samples
    from mot_lightning.shards.urls import expand

    urls = [u for pattern in args.urls for u in expand(pattern, "mot data inspect")]
    counters, kinds, named = StreamCounters(), Counter(), []
    max_bytes = NO_LIMITS.max_member_bytes  # the loader's default caps (data.loader.max_*)
    for sample in shard_samples(progress(urls, "inspect", not args.quiet, "shard"), counters, max_bytes):
        key = str(sample.get("__key__", "?"))
        try:  # the loader's containment: the same problems under the same reasons
            doc = contained(key, partial(parse_sample, sample, frozenset(Modality), args.image_size))
            kinds["+".join(s.modality.label for s in doc.segments) or "empty"] += 1
        except BadSample as bad:
            counters.add(bad.reason, detail=bad.detail)
            named.append((key, bad.reason, bad.detail))
    print(f"{len(urls)} shards, {sum(kinds.values())} readable documents")
    for kind, n in kinds.most_common():
        print(f"  {n:6d}  {kind}")
    skips = {k: v for k, v in counters.skips().items() if v}
    print("problems: " + (", ".join(f"{k}={v}" for k, v in skips.items()) if skips else "none"))
    for key, reason, detail in named[:_NAMED]:
        print(f"  {reason}: {detail}")
    if len(named) > _NAMED:
        print(f"  ... and {len(named) - _NAMED} more")
