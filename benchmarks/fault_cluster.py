"""The cluster cases of ``benchmarks/fault_injection.py`` (12-19): faults a cluster and real data produce.
A lone-surrogate document, SIGTERM, SLURM's requeue signal and a second experiment in the same working
directory, checkpoints without validation, a run ending between checkpoints, 16-bit/RGBA images, a tokenizer
file swapped under a checkpoint, NaN audio. Real ``mot`` commands in subprocesses where the fault is seen from
outside a run; public data functions in this process otherwise."""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from fault_harness import CONFIGS, DATA, ROOT, SMALL, TINY, Ctx, Proc, Row, text_docs, write_tar

from mot_lightning.checkpoints import load_checkpoint

SLURM = {"SLURM_JOB_ID": "4242", "SLURM_NTASKS": "1", "SLURM_JOB_NAME": "mot", "SLURM_PROCID": "0",
         "SLURM_LOCALID": "0", "SLURM_NODEID": "0"}
LONG = ["--trainer.max_steps", "40", "--trainer.limit_val_batches", "0", "--checkpoint.every_n_train_steps", "2"]


def signalled_fit(ctx: Ctx, save: str, signum: int, at: str, cwd: Path, env: dict | None = None) -> Proc:
    """A long `mot fit` (``LONG``) sent ``signum`` once a checkpoint matching ``at`` exists; its output and exit."""
    cmd = [sys.executable, "-m", "mot_lightning.commands", "fit", "--config", str(CONFIGS / "speech/mot.yaml"), *TINY,
           *SMALL, *DATA, "--trainer.logger.init_args.save_dir", str(ctx.work / save), *LONG]
    environ = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(env or {})}
    start, group = time.perf_counter(), ctx.work / save / "speech" / "mot"
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd, cwd=cwd, env=environ, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if group.is_dir() and any(group.glob(f"*/checkpoints/{at}")):
                proc.send_signal(signum)
                break
            time.sleep(0.01)
        try:
            rc = proc.wait(timeout=240)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = -9
        log.seek(0)
        return Proc(rc, log.read().decode(errors="replace"), time.perf_counter() - start)


def last_step(path: Path) -> int | None:
    return load_checkpoint(path)["global_step"] if path.exists() else None


# --- 12. one bad document ------------------------------------------------------------------------
def case12(ctx: Ctx) -> list[Row]:
    bad = {"__key__": "surrogate", "json": b'{"segments": [{"modality": "text", "text": "bad \\ud800 text"}]}'}
    shard = write_tar(ctx.work / "surrogate.tar", [*text_docs("good", 20), bad, *text_docs("more", 20)])
    p = ctx.fit("c12", "--data.sources", f"[{{name: s, urls: {shard}}}]", "--data.loader.num_workers", "1",
                "--trainer.max_steps", "3", "--trainer.limit_val_batches", "0", "--throughput.log_every_n_steps", "1")
    inspect = ctx.mot(["data", "inspect", str(shard), "--quiet"], timeout=120)
    named = inspect.find(r"bad_encoding: surrogate\.json[^;]*", 70)
    skipped = p.find(r"skipped \(bad_encoding\)[^;]*", 80)
    observed = (f"fit exit {p.rc}: `{skipped}`; inspect: "
                f"`{inspect.find(r'problems: .*', 40)}`, `{named}`")
    ok = p.rc == 0 and "skipped (bad_encoding)" in p.out and "problems: bad_encoding=1" in inspect.out and named
    return [Row("12", "a JSON text segment with a lone surrogate (`\\ud800`) among good documents",
                "trains on, skipping and counting it; `mot data inspect` names it", observed, bool(ok),
                p.seconds + inspect.seconds)]


# --- 13. SIGTERM --------------------------------------------------------------------------------
def case13(ctx: Ctx) -> list[Row]:
    p = signalled_fit(ctx, "c13", signal.SIGTERM, "*step=2.ckpt", ctx.work)
    step = last_step(ctx.run_dir("c13") / "checkpoints" / "last.ckpt") if p.rc != -9 else None
    saved = p.find(r"SIGTERM: saved \S+ at optimizer step \d+", 200) or ""
    observed = f"exit {p.rc}; last.ckpt at step {step}; `{saved.rpartition('/')[2]}`"
    ok = p.rc == 143 and step is not None and step >= 2 and f"step {step}" in saved and "DataLoader worker" not in p.out
    return [Row("13", "SIGTERM to a training `mot fit` (docker stop, eviction)",
                "`last.ckpt` at the step reached in the run dir; exit 143", observed, ok, p.seconds)]


# --- 14. SLURM requeue signal, then another experiment in the same working directory -------------
def case14(ctx: Ctx) -> list[Row]:
    cwd = ctx.work / "c14_cwd"
    cwd.mkdir(exist_ok=True)
    p = signalled_fit(ctx, "c14", signal.SIGUSR1, "*step=2.ckpt", cwd, SLURM)
    outside = sorted(x.name for x in cwd.rglob("*.ckpt"))
    own = ctx.run_dir("c14")
    q = ctx.fit("c14", "--trainer.max_steps", "3", "--trainer.limit_val_batches", "0",
                "--model.optimizer.init_args.lr", "1e-4", env=SLURM)  # another experiment, no --ckpt_path
    other = [d for d in (ctx.work / "c14" / "speech" / "mot").iterdir() if d != own]
    step = last_step(other[0] / "checkpoints" / "last.ckpt") if other else None
    restored = json.loads((other[0] / "run.json").read_text())["launches"][-1].get("restored") if other else "?"
    observed = (f"signalled run exit {p.rc}, checkpoints outside the run dir: {outside or 'none'}; other experiment "
                f"exit {q.rc}, ended at step {step} (from scratch: {step == 3}), run.json restored: {restored}")
    ok = p.rc == 128 + signal.SIGUSR1 and not outside and q.rc == 0 and step == 3 and restored is None
    return [Row("14", "SLURM env: SIGUSR1 during `mot fit`, then another experiment (other lr) in the same cwd",
                "`last.ckpt` in the run dir only, exit 138; the other run adopts nothing", observed, ok,
                p.seconds + q.seconds)]


# --- 15/16. checkpoint cadence and the last step ------------------------------------------------
def case15(ctx: Ctx) -> list[Row]:
    rows = []
    for case, save, args, fault in (
            ("15", "c15", ["--trainer.limit_val_batches", "0", "--data.loader.train_batches_per_epoch", "2"],
             "`limit_val_batches 0`, `max_steps 5`, `train_batches_per_epoch 2`"),
            ("16", "c16", ["--trainer.val_check_interval", "3", "--data.loader.train_batches_per_epoch", "100",
                           "--checkpoint.every_n_train_steps", "2"],
             "`max_steps 5`, validation every 3 (the 40/30 report, scaled)")):
        p = ctx.fit(save, *args, "--trainer.max_steps", "5")
        ckpts = ctx.run_dir(save) / "checkpoints" if p.rc == 0 else ctx.work
        steps = sorted(int(x.stem.rpartition("step=")[2]) for x in ckpts.glob("*step=*.ckpt"))
        last = last_step(ckpts / "last.ckpt")
        rows.append(Row(case, fault, "step checkpoints every 2 steps (latest kept: step 4); `last.ckpt` at step 5",
                        f"exit {p.rc}; step checkpoints {steps}; last.ckpt step {last}",
                        p.rc == 0 and steps == [4] and last == 5, p.seconds))
    return rows


# --- 17. one image decoding; NaN audio -----------------------------------------------------------
def case17(ctx: Ctx) -> list[Row]:
    import soundfile
    import torch
    from PIL import Image

    from mot_lightning.data.documents import BadSample, load_audio, load_image
    from mot_lightning.tokenizers.media import read_image

    start, seen = time.perf_counter(), []
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, np.arange(16, dtype=np.uint8)[None, :] * 17
    ramp = np.linspace(0, 65535, 256).reshape(16, 16).astype(np.uint16)
    for name, img in (("16-bit grey", Image.fromarray(ramp)), ("RGBA", Image.fromarray(rgba, "RGBA"))):
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        train, fit = load_image(buf.getvalue(), 16), read_image(buf.getvalue())
        seen.append(f"{name}: equal {torch.equal(train, fit)}, mean {float(train.mean()):.2f}")
    wave = np.zeros(1600, np.float32)
    wave[5] = np.nan
    buf = io.BytesIO()
    soundfile.write(buf, wave, 16000, format="WAV", subtype="FLOAT")
    try:
        load_audio(buf.getvalue())
        reason = "tokenized"
    except BadSample as bad:
        reason = bad.reason
    seen.append(f"NaN WAV: {reason}")
    ok = all("equal True" in s for s in seen[:2]) and reason == "bad_audio" and "mean 0.50" in seen[0]
    return [Row("17", "16-bit greyscale and RGBA PNGs; a float WAV with a NaN sample",
                "training and tokenizer fitting decode alike (scaled, over white); NaN audio is `bad_audio`",
                "; ".join(seen), ok, time.perf_counter() - start)]


# --- 18. a tokenizer file swapped under a checkpoint ----------------------------------------------
def case18(ctx: Ctx) -> list[Row]:
    from mot_lightning.tokenizers.image_kmeans import KMeansImageTokenizer

    ckpt = ctx.base_ckpt("mot")
    [fitted] = (ROOT / "data/tokenizers").glob("image-KMeansImageTokenizer-*.pt")
    other = KMeansImageTokenizer.load(str(fitted))
    other.codebook = other.codebook.flip(0).contiguous()  # same shapes, other codes
    other_file = ctx.work / "other-image.pt"
    other.save(str(other_file))
    swap = ["--data.tokenizer_files.files", json.dumps({"image": str(other_file)})]
    fit = ctx.fit("c18", *swap, "--ckpt_path", str(ckpt), "--trainer.max_steps", "2")
    val = ctx.fit("c18v", *swap, "--ckpt_path", str(ckpt), command="validate")
    gen = ctx.mot(["generate", "--ckpt", str(ckpt), "--config", str(CONFIGS / "speech/mot.yaml"), *TINY, *DATA, *swap,
                   "--out", str(ctx.work / "c18g"), "--task", "caption_to_image"], timeout=180)
    pattern = r"image: .* was trained with [^;]*"
    refused = [p.rc != 0 and other_file.name in p.out and "tokenizers differ" in p.out for p in (fit, val, gen)]
    observed = f"fit exit {fit.rc}, validate exit {val.rc}, generate exit {gen.rc}: `{gen.find(pattern, 100)}`"
    return [Row("18", "an image tokenizer file of the same shapes, other codes, under a trained checkpoint",
                "refused by `--ckpt_path`, `mot validate` and `mot generate`, naming the files", observed,
                all(refused), fit.seconds + val.seconds + gen.seconds)]


CLUSTER_CASES = {"12": case12, "13": case13, "14": case14, "15": case15, "17": case17, "18": case18}
