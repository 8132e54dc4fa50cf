"""``mot tokenizer``: fit tokenizers, inspect tokenizer files, round-trip a file, write demo data.

    mot tokenizer demo-data --out data/demo/tokenizers          # demo-world images/audio/text (seconds)
    mot tokenizer fit --config configs/tokenizers/vqvae_image.yaml [--train.max_steps 100 ...]
    mot tokenizer info runs/tokenizers/vqvae_image.pt
    mot tokenizer roundtrip runs/tokenizers/vqvae_image.pt some.png --out recon.png

``fit`` reads a YAML with ``tokenizer`` (class_path + init_args), ``data`` (FitData),
``train`` (TrainConfig, used by the VQ-VAE and KL-VAE) and ``output`` (the tokenizer file);
it logs progress, saves the tokenizer, and writes its held-out metrics next to it as JSON.
"""
from __future__ import annotations

import json
import logging
import math
import sys
import time
from pathlib import Path

from jsonargparse import ActionConfigFile, ArgumentParser

from mot_lightning.logs import configure_logging
from mot_lightning.tokenizers.fitting import FitData, FittableTokenizer, TrainConfig

log = logging.getLogger("mot_lightning.tokenizers")


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="mot tokenizer", description="Fit and inspect mot_lightning tokenizers.")
    commands = parser.add_subcommands(dest="command")

    fit = ArgumentParser(description="Fit a learned tokenizer on your data and save it to --output.")
    fit.add_argument("--config", action=ActionConfigFile, help="YAML: tokenizer, data, train, output")
    fit.add_subclass_arguments(FittableTokenizer, "tokenizer", required=True,
                               help="class_path of a tokenizer (BPETokenizer, KMeansImageTokenizer, ...)")
    fit.add_class_arguments(FitData, "data")
    fit.add_class_arguments(TrainConfig, "train")
    fit.add_argument("--output", type=str, required=True, help="tokenizer file to write (.pt)")
    commands.add_subcommand("fit", fit, help="fit a tokenizer from a YAML config")

    info = ArgumentParser(description="Print what a tokenizer file holds.")
    info.add_argument("path", type=str)
    commands.add_subcommand("info", info, help="describe a tokenizer file")

    rt = ArgumentParser(description="Encode then decode one image/audio/text file; report tokens and error.")
    rt.add_argument("path", type=str, help="tokenizer file")
    rt.add_argument("input", type=str, help="an image, audio or text file")
    rt.add_argument("--out", type=str, default=None, help="where to write the reconstruction")
    commands.add_subcommand("roundtrip", rt, help="round-trip one file through a tokenizer")

    demo = ArgumentParser(description="Write demo-world renders (PNG), spoken captions (WAV) and "
                                      "descriptions (TXT): the world the demo corpus shows.")
    demo.add_argument("--out", type=str, default="data/demo/tokenizers")
    demo.add_argument("--images", type=int, default=1000)
    demo.add_argument("--audio", type=int, default=60)
    demo.add_argument("--texts", type=int, default=300)
    demo.add_argument("--image_size", type=int, default=64)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--voice", type=str, default="builtin", help="builtin synthesizer or espeak")
    commands.add_subcommand("demo-data", demo, help="write demo-world media folders to fit on")
    return parser


def main(argv: list[str] | None = None) -> None:
    configure_logging()  # progress lines (MOT_LOG_LEVEL changes the level)
    parser = build_parser()
    cfg = parser.parse_args(argv)
    sub = cfg[cfg.command]
    if cfg.command == "fit":
        instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes  # its name < 4.49
        run_fit(instantiate(cfg)["fit"])
    elif cfg.command == "info":
        print(json.dumps(describe(sub.path), indent=2))
    elif cfg.command == "roundtrip":
        print(json.dumps(roundtrip(sub.path, sub.input, sub.out), indent=2))
    elif cfg.command == "demo-data":
        from mot_lightning.world.folders import write_media_folders

        write_media_folders(sub.out, sub.images, sub.audio, sub.texts, sub.image_size, sub.seed, sub.voice)


def run_fit(cfg) -> dict[str, float]:
    tokenizer, data, train, output = cfg.tokenizer, cfg.data, cfg.train, cfg.output
    log.info("fitting %s on %s", type(tokenizer).__name__, data.path)
    t0 = time.perf_counter()
    metrics = tokenizer.fit(data, train)
    if _is_rank_zero():
        tokenizer.save(output)
        metrics = {"wall_seconds": round(time.perf_counter() - t0, 2), **metrics}
        Path(output).with_suffix(".metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        log.info("saved %s; held-out metrics: %s", output, json.dumps(metrics))
    return metrics


def _is_rank_zero() -> bool:
    """True except on the non-zero ranks of a multi-device Lightning fit."""
    if "lightning" not in sys.modules:
        return True
    from lightning.pytorch.utilities import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


def describe(path: str) -> dict:
    from mot_lightning.tokenizers.base import DiscreteTokenizer
    from mot_lightning.tokenizers.files import read_tokenizer_file
    from mot_lightning.tokenizers.registry import load_tokenizer

    payload = read_tokenizer_file(path)
    tok = load_tokenizer(path)
    out = {"kind": payload["kind"], "modality": tok.modality.label, "config": payload["config"]}
    if isinstance(tok, DiscreteTokenizer):
        out |= {"vocab_size": tok.vocab_size, "special_tokens": tok.special_tokens}
    else:
        out |= {"latent_dim": tok.latent_dim}
    for attr in ("tokens_per_image", "patches_per_image"):
        if hasattr(tok.config, attr):
            out["tokens_per_image"] = getattr(tok.config, attr)
    if hasattr(tok.config, "unit_rate"):
        out["tokens_per_second"] = tok.config.unit_rate
    return out


def roundtrip(path: str, input_path: str, out: str | None) -> dict:
    from mot_lightning.modality import Modality
    from mot_lightning.tokenizers.media import prepare_image, read_audio, save_image, write_audio
    from mot_lightning.tokenizers.registry import load_tokenizer

    tok = load_tokenizer(path)
    if tok.modality == Modality.TEXT:
        text = Path(input_path).read_text(encoding="utf-8")
        ids = tok.encode(text)
        return {"tokens": ids.numel(), "exact": tok.decode(ids) == text}
    if tok.modality == Modality.IMAGE:
        img = prepare_image(input_path, tok.config.resolution)
        enc = tok.encode(img)
        recon = tok.decode(enc)
        if out:
            save_image(out, recon)
        mse = float((recon - img).pow(2).mean())
        return {"tokens": tok.num_tokens(img), "psnr": 10 * math.log10(1 / max(mse, 1e-10))}
    wave, rate = read_audio(input_path)
    ids = tok.encode(wave, sample_rate=rate)
    recon = tok.decode(ids)
    if out:
        write_audio(out, recon, tok.sample_rate)
    return {"tokens": ids.numel(), "seconds": recon.numel() / tok.sample_rate}


if __name__ == "__main__":
    main()
