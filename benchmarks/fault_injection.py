"""Fault injection: a hostile-but-fair user's list (1-11) and a cluster's (12-18, ``fault_cluster.py``) run
against the demo configs.

Every case is a real ``mot`` command (``fit``, ``validate``, ``generate``) in a subprocess on
``configs/speech/{mot,dense}.yaml`` + ``configs/model/tiny.yaml`` with a few steps, or hand-made bad
shards, checkpoints and signals; the data-layer cases that cannot be seen from outside a run (uneven
shards, interrupts while decoding) call the public data functions in this process. Prints a markdown
table case -> expected -> observed -> pass/FAIL and writes it to ``--out``; exits 1 if any case fails.

    OMP_NUM_THREADS=1 python benchmarks/fault_injection.py            # ~6-10 min on 2 busy cores
    python benchmarks/fault_injection.py --cases 4,10 --keep /tmp/fi  # some cases, keep their files

The demo corpus and fitted tokenizers are read from ``data/`` (made there by the first run if absent).
"""
from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fault_cluster import CLUSTER_CASES
from fault_harness import (
    CONFIGS,
    DATA,
    ROOT,
    SMALL,
    TINY,
    Ctx,
    Payload,
    Row,
    exit_line,
    finite,
    huge_png,
    other_filesystem,
    pickle_payload,
    scalars,
    table,
    text_docs,
    write_tar,
)

from mot_lightning.checkpoints import load_checkpoint


# --- 1. silent hang --------------------------------------------------------------------------------
def case1(ctx: Ctx) -> list[Row]:
    p = ctx.fit("c1", "--data.seq_len", "48", "--data.loader.num_workers", "1", timeout=240)
    pattern = r"no document fits seq_len 48: the shortest has \d+ tokens"
    rows = [Row("1", "`--data.seq_len 48` (no demo document fits), 1 worker",
                "fails within seconds naming the cause", exit_line(p, pattern),
                p.rc not in (0, -9) and p.find(pattern) is not None and p.seconds < 120, p.seconds)]
    shard = write_tar(ctx.work / "good.tar", text_docs("good", 40))
    slow = f"[{{name: slow, urls: 'pipe:sleep 30; cat {shard}'}}]"  # a source that never answers in time
    p = ctx.fit("c1b", "--data.sources", slow, "--data.loader.num_workers", "1", "--data.loader.timeout", "3",
                timeout=240)
    pattern = r"no batch from the data workers in 3 s \(data.loader.timeout\)"
    rows.append(Row("1", "a source that stalls (`pipe:sleep 30; cat ...`), `data.loader.timeout 3`",
                    "the stall becomes an error naming the timeout key", exit_line(p, pattern),
                    p.rc not in (0, -9) and p.find(pattern) is not None and p.seconds < 120, p.seconds))
    return rows


# --- 2. NaN trains on ------------------------------------------------------------------------------
def case2(ctx: Ctx) -> list[Row]:
    p = ctx.fit("c2", "--model.optimizer.init_args.lr", "1.0e6", "--trainer.max_steps", "30",
                "--data.loader.train_batches_per_epoch", "30", "--checkpoint.every_n_train_steps", "1")
    m = re.search(r"optimizer step (\d+): non-finite", p.out)
    observed, ok = exit_line(p, r"optimizer step \d+: non-finite[^;]*"), False
    if m and p.rc != 0 and "Done." not in p.out:
        last = load_checkpoint(ctx.run_dir("c2") / "checkpoints" / "last.ckpt")
        ok = last["global_step"] == int(m.group(1)) and finite(last["state_dict"])
        observed += f"; last.ckpt: step {last['global_step']}, finite {finite(last['state_dict'])}"
    rows = [Row("2", "`lr: 1.0e6` (NaN from the first steps)",
                "stops naming the step and what went non-finite; `last.ckpt` = last good step, finite",
                observed, ok, p.seconds)]

    p = ctx.fit("c2b", "--model.optimizer.init_args.lr", "10", "--model.scheduler.init_args.warmup_steps", "1",
                "--nonfinite.check_after_steps", "4", "--trainer.max_steps", "4", "--trainer.limit_val_batches", "0")
    pattern = r"above [\d.]+ x chance \([^)]*\)[^;]*"
    rows.append(Row("2", "`lr: 10` (finite loss far above chance)", "warns naming the learning rate",
                    f"exit {p.rc}: `{p.find(pattern, 150)}`", p.find(pattern) is not None, p.seconds))

    poisoned = ctx.work / "poisoned.ckpt"
    checkpoint = load_checkpoint(ctx.base_ckpt("mot"))
    head = next(k for k in checkpoint["state_dict"] if k.endswith("head.weight"))
    checkpoint["state_dict"][head][7, 0] = float("inf")  # every logit row holds inf - inf = NaN
    torch.save(checkpoint, poisoned)
    p = ctx.fit("c2c", "--ckpt_path", str(poisoned), "--trainer.limit_val_batches", "2", command="validate")
    tags = scalars(ctx.run_dir("c2c") / "validate" / "version_0") if p.rc == 0 else {}
    nan = sorted(t for t, v in tags.items() if re.fullmatch(r"val/loss(_\w+)?", t) and v[-1][1] != v[-1][1])
    rows.append(Row("2", "`mot validate` of non-finite weights", "`val/loss_<modality>` logged as NaN, not dropped",
                    f"exit {p.rc}; NaN tags: {', '.join(nan) or 'none'}",
                    p.rc == 0 and {"val/loss", "val/loss_text", "val/loss_image"} <= set(nan), p.seconds))
    return rows


# --- 3. a checkpoint silently overrides the config ---------------------------------------------------
def case3(ctx: Ctx) -> list[Row]:
    dense = ctx.base_ckpt("dense")
    p = ctx.fit("c3", "--ckpt_path", str(dense), "--trainer.max_steps", "2")
    pattern = r"backbone.sparsity: checkpoint 'dense', config 'mot'"
    made = (ctx.work / "c3").exists()
    rows = [Row("3", "`mot fit --config speech/mot.yaml --ckpt_path <dense last.ckpt>`",
                "refused before anything is built, naming the differences",
                exit_line(p, pattern) + f"; run dir made: {made}",
                p.rc != 0 and p.find(pattern) is not None and not made, p.seconds)]
    p = ctx.fit("c3b", "--ckpt_path", str(dense), "--trainer.max_steps", "2", "--model_from_ckpt", "true")
    observed, ok = f"exit {p.rc}", False
    if p.rc == 0:
        last = load_checkpoint(ctx.run_dir("c3b") / "checkpoints" / "last.ckpt")
        sparsity = last["hyper_parameters"]["backbone"]["sparsity"]
        observed += f"; trained on to step {last['global_step']} as {sparsity!r}"
        ok = sparsity == "dense" and last["global_step"] == 2
    rows.append(Row("3", "the same with `--model_from_ckpt true`", "takes the checkpoint's model and trains on",
                    observed, ok, p.seconds))
    return rows


# --- 4. torn checkpoint ----------------------------------------------------------------------------
TORN = ["--checkpoint.every_n_train_steps", "1", "--trainer.limit_val_batches", "0",
        "--data.loader.train_batches_per_epoch", "100000", "--model.scheduler.init_args.max_steps", "100000"]


def kill_mid_save(ctx: Ctx, save: str, tmpdir: Path) -> tuple[Path, list[str]]:
    """Start a long `mot fit` saving every step (default-size model: ~34 MB per file), SIGKILL it while
    a checkpoint temporary is being written; (checkpoint dir, names of the temporaries it left)."""
    cmd = [sys.executable, "-m", "mot_lightning.commands", "fit", "--config", str(CONFIGS / "speech/mot.yaml"),
           *SMALL, *DATA, "--trainer.logger.init_args.save_dir", str(ctx.work / save), *TORN,
           "--trainer.max_steps", "100000"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TMPDIR": str(tmpdir)}
    proc = subprocess.Popen(cmd, cwd=ctx.work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt_dir, deadline = None, time.monotonic() + 180
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            group = ctx.work / save / "speech" / "mot"
            ckpt_dir = next(group.glob("*/checkpoints"), None) if group.is_dir() else None
            if ckpt_dir is not None and (ckpt_dir / "last.ckpt").exists() and any(
                    e.name.endswith(f".tmp-{proc.pid}") and e.stat().st_size > 0 for e in os.scandir(ckpt_dir)):
                break
            time.sleep(0.002)
    except FileNotFoundError:  # a temporary renamed between listing and stat: kill on the next one
        pass
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    leaked = sorted(p.name for p in ckpt_dir.glob("*.tmp-*")) if ckpt_dir else []
    return ckpt_dir, leaked


def case4(ctx: Ctx) -> list[Row]:
    tmpdir = ctx.other_fs / "tmpdir"
    tmpdir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for attempt in range(4):  # a kill landing between two saves proves nothing: try again
        save = f"c4_{attempt}"
        ckpt_dir, leaked = kill_mid_save(ctx, save, tmpdir)
        if leaked:
            break
    fault = "`kill -9` during a checkpoint save, checkpoint dir and TMPDIR on different filesystems"
    if not leaked:
        return [Row("4", fault, "`last.ckpt` loadable", "the kill never landed inside a save", False,
                    time.perf_counter() - start)]
    step = load_checkpoint(ckpt_dir / "last.ckpt")["global_step"]  # weights-only: raises if torn
    staged = list(tmpdir.iterdir())
    p = ctx.fit(save, *TORN, "--trainer.max_steps", str(step + 2), "--ckpt_path", "last", tiny=False,
                env={"TMPDIR": str(tmpdir)})
    after = load_checkpoint(ckpt_dir / "last.ckpt")["global_step"] if p.rc == 0 else None
    left = sorted(x.name for x in ckpt_dir.glob("*.tmp-*"))
    observed = (f"killed with `{leaked[0]}` half written; `last.ckpt` loads (step {step}); "
                f"TMPDIR: {len(staged)} files; resume `--ckpt_path last` exit {p.rc} -> step {after}; "
                f"temporaries left: {len(left)}")
    ok = not staged and p.rc == 0 and after == step + 2 and not left
    return [Row("4", fault, "`last.ckpt` = the previous complete file; resume works; no temporaries left",
                observed, ok, time.perf_counter() - start)]


# --- 5. empty shard + 2 workers --------------------------------------------------------------------
def case5(ctx: Ctx) -> list[Row]:
    empty = write_tar(ctx.work / "empty.tar", [])
    good = write_tar(ctx.work / "good5.tar", text_docs("good", 40))
    sources = f"[{{name: s, urls: [{empty}, {good}]}}]"
    p = ctx.fit("c5", "--data.sources", sources, "--data.loader.num_workers", "2", "--trainer.max_steps", "3",
                "--trainer.limit_val_batches", "0")
    return [Row("5", "sources `[empty.tar, good.tar]`, `num_workers: 2`", "trains (3 steps), exit 0",
                exit_line(p, r"`?Trainer.fit` stopped: `max_steps=3` reached|Error.*"), p.rc == 0, p.seconds)]


# --- 6. skips unseen -------------------------------------------------------------------------------
SKIPPY = ["--data.seq_len", "128", "--model.scheduler.init_args.max_steps", "4", "--trainer.val_check_interval", "2",
          "--throughput.log_every_n_steps", "1"]  # the training skip counters are logged with throughput
TOO_LONG = "data/train/skipped_too_long"


def last_value(tags: dict, tag: str, at: int = -1) -> float:
    return (tags.get(tag) or [(0, 0.0)])[at][1]


def case6(ctx: Ctx) -> list[Row]:
    """seq_len 128 on the demo corpus: about 9 in 10 documents are too long (none fits at 100)."""
    p = ctx.fit("c6", *SKIPPY, "--trainer.max_steps", "2")
    warnings = re.findall(r"data stream 'train': [\d,]+ of [\d,]+ documents skipped", p.out)
    p2 = ctx.fit("c6", *SKIPPY, "--trainer.max_steps", "4", "--ckpt_path", "last")
    run = ctx.run_dir("c6")
    first, resumed = (scalars(run / f"version_{v}") if p.rc == 0 and p2.rc == 0 else {} for v in (0, 1))
    before, after = last_value(first, TOO_LONG), last_value(resumed, TOO_LONG, 0)
    stages = sorted(t for t in first if t.startswith("data/") and t.endswith("skipped_too_long"))
    quoted = p.find(r"data stream 'train': [\d,]+ of [\d,]+ documents skipped[^;]*", 100)
    rows = [Row("6", "`--data.seq_len 128` (most demo documents too long), stopped at step 2, resumed to 4",
                "warns once with reasons and counts; counters per stage; carried across resume",
                f"{len(warnings)} warning: `{quoted}`; tags {', '.join(stages)}; {TOO_LONG} {before:.0f} at "
                f"step 2, {after:.0f} at the resumed run's first log",
                len(warnings) == 1 and len(stages) == 2 and after >= before > 0, p.seconds + p2.seconds)]
    p = ctx.fit("c6v", *SKIPPY, "--ckpt_path", str(run / "checkpoints" / "last.ckpt"), command="validate")
    tags = scalars(ctx.run_dir("c6v") / "validate" / "version_0") if p.rc == 0 else {}
    reasons = sorted(t.removeprefix("data/val/skipped_") for t in tags if t.startswith("data/val/skipped_"))
    too_long = last_value(tags, "data/val/skipped_too_long")
    rows.append(Row("6", "`mot validate` of that checkpoint", "reports `data/val/skipped_<reason>`",
                    f"exit {p.rc}; {len(reasons)} reasons ({', '.join(reasons[:3])}, ...); too_long = {too_long:.0f}",
                    p.rc == 0 and too_long > 0 and "bad_encoding" in reasons, p.seconds))
    return rows


# --- 7. hostile shard: bounded decoding, bad encodings, pickles ------------------------------------
def case7(ctx: Ctx) -> list[Row]:
    marker = ctx.work / "unpickled.txt"
    raw = huge_png(12000)
    shard = write_tar(ctx.work / "hostile.tar", [
        {"__key__": "huge", "png": raw, "txt": b"a black square"},
        {"__key__": "latin1", "txt": "caf\xe9 cr\xe8me".encode("latin-1")},
        {"__key__": "broken", "png": b"\x89PNG not really", "txt": b"a broken image"},
        {"__key__": "pickled", "pickle": pickle_payload(marker), "txt": b"a pickle rides along"},
        *text_docs("val", 6)])
    from mot_lightning.data.documents import BadSample, load_image

    start = time.perf_counter()
    try:
        load_image(raw, 32, "huge.png")
        reason = "decoded"
    except BadSample as bad:
        reason = bad.reason
    header_ms = (time.perf_counter() - start) * 1000
    val = f"[{{name: hostile, urls: {shard}}}]"
    p = ctx.fit("c7", "--data.val_sets", val, "--trainer.limit_val_batches", "1.0")
    tags = scalars(ctx.run_dir("c7") / "version_0") if p.rc == 0 else {}
    count = {r: (tags.get(f"data/val/skipped_{r}") or [(0, -1)])[-1][1]
             for r in ("image_too_large", "bad_encoding", "bad_image")}
    observed = (f"exit {p.rc}; {len(raw) // 1024} KB PNG: `{reason}` from its header in {header_ms:.0f} ms; "
                f"val skips {', '.join(f'{r}={n:.0f}' for r, n in count.items())}; pickle loaded: {marker.exists()}")
    ok = p.rc == 0 and reason == "image_too_large" and all(n == 1 for n in count.values()) and not marker.exists()
    return [Row("6, 7", "val shard: 12000x12000 PNG, Latin-1 text, corrupt PNG, a pickle member, good docs",
                "huge image skipped from its header; `bad_encoding` for non-UTF-8; nothing unpickled",
                observed, ok, p.seconds)]


# --- 8. late, misleading errors ------------------------------------------------------------------
def case8(ctx: Ctx) -> list[Row]:
    missing = ctx.work / "missing.ckpt"
    p = ctx.mot(["generate", "--ckpt", str(missing), "--config", str(CONFIGS / "speech/mot.yaml"),
                 "--out", str(ctx.work / "c8")], timeout=120)
    rows = [Row("8", "`mot generate --ckpt missing.ckpt`", "names the file before loading anything",
                exit_line(p, r"--ckpt \S+ is not a checkpoint file[^.]*"),
                p.rc != 0 and "is not a checkpoint file" in p.out and "FSDP" not in p.out, p.seconds)]
    good = write_tar(ctx.work / "good8.tar", text_docs("good", 10))
    p = ctx.fit("c8b", "--data.sources", f"[{{name: nanw, urls: {good}, weight: .nan}}]")
    pattern = r"source 'nanw': weight must be a finite number > 0"
    rows.append(Row("8", "a source with `weight: .nan`", "refused when the config is read, naming the source",
                    exit_line(p, pattern), p.rc != 0 and p.find(pattern) is not None
                    and not (ctx.work / "c8b").exists(), p.seconds))
    p = ctx.fit("c8c", "--data.sources", f"[{{name: gone, urls: '{ctx.work}/nope-{{000..003}}.tar'}}]")
    pattern = r"source 'gone': 4 of 4 shards not found[^;]*"
    rows.append(Row("8", "a source whose shards do not exist", "named before the demo corpus or tokenizers",
                    exit_line(p, pattern), p.rc != 0 and p.find(pattern) is not None, p.seconds))
    return rows


# --- 9. too-broad catches ------------------------------------------------------------------------
def case9(ctx: Ctx) -> list[Row]:
    from mot_lightning.data.documents import BadSample, load_image

    raw, seen, start = huge_png(7000), [], time.perf_counter()
    for error in (KeyboardInterrupt, TimeoutError):
        def fire(signum, frame, error=error):
            raise error("raised inside the decoder")

        previous = signal.signal(signal.SIGALRM, fire)
        try:
            signal.setitimer(signal.ITIMER_REAL, 0.02)  # decoding 49 Mpixel takes far longer
            load_image(raw, 32, max_pixels=10**8)
            seen.append(f"{error.__name__}: not raised")
        except BadSample as bad:
            seen.append(f"{error.__name__} -> swallowed as {bad.reason}")
        except error:
            seen.append(f"{error.__name__} propagated")
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
    ok = all(s.endswith("propagated") for s in seen)
    return [Row("9", "SIGALRM raising KeyboardInterrupt / TimeoutError while `load_image` decodes",
                "the exception leaves the decoder (not a skipped `bad_image`)", "; ".join(seen), ok,
                time.perf_counter() - start)]


# --- 10. untrusted checkpoints ---------------------------------------------------------------------
def case10(ctx: Ctx) -> list[Row]:
    marker, evil = ctx.work / "checkpoint_code_ran.txt", ctx.work / "evil.ckpt"
    checkpoint = torch.load(ctx.base_ckpt("mot"), weights_only=True)
    checkpoint["callbacks"]["Evil"] = Payload(marker)
    torch.save(checkpoint, evil)
    gen = ctx.mot(["generate", "--ckpt", str(evil), "--config", str(CONFIGS / "speech/mot.yaml"), *TINY,
                   "--out", str(ctx.work / "c10"), "--task", "caption_to_image", *DATA], timeout=120)
    fit = ctx.fit("c10b", "--ckpt_path", str(evil), "--trainer.max_steps", "2")
    refused = [p.rc != 0 and "does not load" in p.out for p in (gen, fit)]
    ran = marker.exists()
    torch.load(evil, weights_only=False)  # the control: an unrestricted load runs the payload
    pattern = r"objects the app does not load: [^;]*"
    observed = (f"generate exit {gen.rc}, fit exit {fit.rc}: `{gen.find(pattern, 90)}`; payload ran: {ran} "
                f"(control `torch.load(weights_only=False)`: ran {marker.exists()})")
    return [Row("10", "a checkpoint whose pickle opens a file, to `mot generate --ckpt` and `mot fit --ckpt_path`",
                "refused naming the object; nothing runs", observed, all(refused) and not ran and marker.exists(),
                gen.seconds + fit.seconds)]


# --- 11. uneven shards across workers ------------------------------------------------------------
def case11(ctx: Ctx) -> list[Row]:
    from collections import Counter

    from mot_lightning.data.datamodule import MultiModalDataModule
    from mot_lightning.data.options import DemoCorpus, LoaderConfig
    from mot_lightning.data.sources import SourceConfig
    from mot_lightning.tokenizers.text import ByteTokenizer

    start = time.perf_counter()
    small = write_tar(ctx.work / "small.tar", text_docs("small", 10))
    large = write_tar(ctx.work / "large.tar", text_docs("large", 45))
    dm = MultiModalDataModule(ByteTokenizer(), sources=[SourceConfig("s", [str(small), str(large)])], val_sets=[],
                              modalities=["text"], seq_len=64, batch_size=2, demo=DemoCorpus(str(ctx.work / "d")),
                              loader=LoaderConfig(num_workers=2, shuffle_buffer=0, train_batches_per_epoch=60))
    dm.setup("fit")
    seen: Counter = Counter()
    for batch in dm.train_dataloader():
        for row in batch.tokens:
            text = bytes(t for t in row.tolist() if t < 256).decode("utf-8", errors="replace")
            seen.update(re.findall(r"(small|large)-\d{4}", text))
    per_doc = {k: sum(n for t, n in seen.items() if t.startswith(k)) / size for k, size in (("small", 10),
                                                                                           ("large", 45))}
    ratio = per_doc["small"] / max(per_doc["large"], 1e-9)
    return [Row("11", "shards of 10 and 45 documents, 2 workers, 60 batches",
                "each document drawn about equally often (ratio ~1; by shard it was 4.5)",
                f"repeats per document small/large = {per_doc['small']:.1f}/{per_doc['large']:.1f} = {ratio:.2f}",
                0.8 < ratio < 1.25, time.perf_counter() - start)]


CASES: dict[str, Callable[[Ctx], list[Row]]] = {
    "1": case1, "2": case2, "3": case3, "4": case4, "5": case5, "6": case6, "7": case7, "8": case8, "9": case9,
    "10": case10, "11": case11, **CLUSTER_CASES}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", default=",".join(CASES), help="comma-separated case numbers (default: all)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/fault_injection.md"))
    ap.add_argument("--keep", help="work in this directory and keep it (default: a temporary one, removed)")
    args = ap.parse_args(argv)
    work = Path(args.keep or tempfile.mkdtemp(prefix="mot-fault-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    ctx, rows, start = Ctx(work, other_filesystem(work)), [], time.perf_counter()
    try:
        for name in args.cases.split(","):
            print(f"case {name} ...", flush=True)
            try:
                rows += CASES[name](ctx)
            except Exception as err:  # noqa: BLE001 - a crashed case is a failed case; the others still run
                rows.append(Row(name, CASES[name].__name__, "runs", f"{type(err).__name__}: {err}"[:300], False))
            print(table(rows[-1:]).splitlines()[-1], flush=True)
    finally:
        if ctx.other_fs.is_relative_to("/dev/shm"):
            shutil.rmtree(ctx.other_fs, ignore_errors=True)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    total = time.perf_counter() - start
    failed = sum(not r.ok for r in rows)
    report = (f"# Fault injection\n\n`OMP_NUM_THREADS=1 python benchmarks/fault_injection.py"
              f"{'' if args.cases == ','.join(CASES) else ' --cases ' + args.cases}` on {platform.machine()}, "
              f"{os.cpu_count()} cores, torch {torch.__version__}: {len(rows) - failed} of {len(rows)} pass, "
              f"{total / 60:.1f} min.\n\n{table(rows)}\n")
    print("\n" + report)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(report)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
