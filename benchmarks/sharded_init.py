"""Paper sizes on CPU: FSDP2's meta-device build against the whole-model build, and `mot plan` against
measured memory. Every case is a real `mot fit` (speech setting: text, image, speech) with
``benchmarks/memory_probe.py`` recording each rank's start-up time, peaks and steps.

    python benchmarks/sharded_init.py --out benchmarks/results/sharded_init.json

Cases (``--cases`` picks some):
- ``eager_startup``: chameleon-443m as a 3-modality MoT under FSDP2 on 2 processes (gloo), built the old way
  (``model.sharded_init: false``: the whole model on every rank, then sharded); start-up only;
- ``meta_fit``: the same on the meta-device path: start-up, 2 training steps, a sharded checkpoint;
- ``meta_resume``: that run resumed from its checkpoint (``--ckpt_path last``) for 1 more step;
- ``plan_94m``: chameleon-94m MoT, one process, the setting's own 8 rows x 256 tokens;
- ``plan_443m_dense``: chameleon-443m dense, one process.

Memory is resident memory per process (Linux ``VmHWM``); what the plan predicts is the model's part, so the
comparison subtracts what the process held right before the model was built (``rss_before_build``: imports,
data module, tokenizers). The demo corpus and tokenizers are made first, by a 1-step tiny run, outside the
timings.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mot_lightning.commands.plan import backbone_config, merged_config  # noqa: E402
from mot_lightning.model.memory import RunShape, memory_plan  # noqa: E402

GB = 1e9
SPEECH, FSDP2 = "configs/speech/mot.yaml", "configs/trainer/fsdp2.yaml"
SHORT = ["--data.seq_len", "128", "--data.batch_size", "1", "--data.loader.overlong", "truncate"]
# glibc serves large blocks by mmap and returns them to the system when freed, so resident memory follows the
# live tensors (by default its threshold grows up to 32 MB and freed activations stay in the heap: +20-40%)
MMAP_THRESHOLD = "65536"
# plain SGD (no optimizer state) instead of AdamW's two fp32 moments: the 443M MoT's two ranks with AdamW would
# need ~17 GB of this 24 GB machine shared with other jobs (with SGD's momentum, ~14 GB: killed by the kernel's
# out-of-memory killer when the other jobs grew); the plan counts the optimizer the run uses
SGD = ["--model.optimizer.class_path", "torch.optim.SGD", "--model.optimizer.init_args.lr", "0.01",
       "--model.optimizer.init_args.momentum", "0.0"]
CASES = {  # name -> (configs, extra arguments, strategy for the plan, world size)
    "eager_startup": ([SPEECH, "configs/model/chameleon-443m.yaml", FSDP2],
                      [*SHORT, "--model.sharded_init", "false", "--trainer.limit_train_batches", "0"], "fsdp", 2),
    "meta_fit": ([SPEECH, "configs/model/chameleon-443m.yaml", FSDP2], [*SHORT, *SGD, "--trainer.max_steps", "2"],
                 "fsdp", 2),
    "meta_resume": ([SPEECH, "configs/model/chameleon-443m.yaml", FSDP2],
                    [*SHORT, *SGD, "--trainer.max_steps", "3", "--ckpt_path", "META_FIT_LAST"], "fsdp", 2),
    "plan_94m": ([SPEECH, "configs/model/chameleon-94m.yaml"], ["--trainer.max_steps", "2"], "single", 1),
    "plan_443m_dense": ([SPEECH, "configs/model/chameleon-443m.yaml"],
                        [*SHORT, "--model.backbone.sparsity", "dense", "--trainer.max_steps", "2"], "single", 1),
}
# resumed from the first run's sharded checkpoint, named by path: each case's probe directory is part of the
# resolved config, so the resumed run has another config hash (its own run dir) and `last` would not find it
RUN_DIRS = {"meta_resume": "meta_fit"}


def common(work: Path, case: str) -> list[str]:
    save = work / "runs" / RUN_DIRS.get(case, case)
    return ["--data.demo.dir", str(work / "demo"), "--data.tokenizer_files.dir", str(work / "tokenizers"),
            "--trainer.logger.init_args.save_dir", str(save), "--data.loader.num_workers", "1",
            "--data.loader.train_batches_per_epoch", "2", "--trainer.limit_val_batches", "0",
            "--model.scheduler.init_args.max_steps", "3", "--model.scheduler.init_args.warmup_steps", "1"]


def wait_for_memory(needed_gb: float, patience_s: float = 900) -> None:
    """On a shared machine: start a case only when the system can give it ``needed_gb`` (MemAvailable)."""
    deadline = time.monotonic() + patience_s
    while True:
        line = next(x for x in Path("/proc/meminfo").read_text().splitlines() if x.startswith("MemAvailable:"))
        available = float(line.split()[1]) * 1024 / GB
        if available >= needed_gb or time.monotonic() > deadline:
            return
        print(f"waiting for memory: {available:.1f} GB available, {needed_gb:.1f} GB wanted", flush=True)
        time.sleep(20)


def mot_fit(args: list[str], log: Path) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", "PYTHONPATH": str(ROOT),
           "MALLOC_MMAP_THRESHOLD_": MMAP_THRESHOLD}
    start = time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.run([sys.executable, "-m", "mot_lightning.commands", "fit", *args], cwd=ROOT, env=env,
                              stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise SystemExit(f"mot fit failed ({log}):\n" + log.read_text()[-3000:])
    return time.perf_counter() - start


def planned(case: str, rank0: dict, args: list[str]) -> dict:
    configs, extra, strategy, world = CASES[case]
    config = merged_config([str(ROOT / c) for c in configs])
    opts = dict(zip(extra[::2], extra[1::2]))
    backbone = config["model"]["backbone"]
    if "--model.backbone.sparsity" in opts:
        backbone["sparsity"] = opts["--model.backbone.sparsity"]
    cfg = backbone_config(config)
    states = 0 if "torch.optim.SGD" in extra else 2  # SGD without momentum
    seq_len = int(opts.get("--data.seq_len", config["data"]["seq_len"]))
    shape = RunShape(vocab_size=rank0["vocab_size"], optimizer_states=states, seq_len=seq_len,
                     batch_size=int(opts.get("--data.batch_size", config["data"]["batch_size"])), world_size=world,
                     strategy=strategy, z_loss=True, sharded_init=opts.get("--model.sharded_init") != "false",
                     norms="hand")  # these runs are CPU float32: the hand-written RMSNorm
    plan = memory_plan(cfg, shape)
    return {"startup_gb": plan.startup / GB, "total_gb": plan.total / GB,
            "terms_gb": {k: getattr(plan, k) / GB for k in ("parameters", "gradients", "optimizer", "activations",
                                                            "transient")}}


def measured(probe: Path) -> list[dict]:
    out = []
    for path in sorted(probe.glob("rank*.json")):
        r = json.loads(path.read_text())
        base = r["rss_before_build"]
        out.append({**r, "startup_model_gb": (r["startup_peak"] - base) / GB,
                    "train_model_gb": (r["train_peak"] - base) / GB if "train_peak" in r else None})
    return out


def summary(results: dict) -> str:
    """Markdown: per case and rank, start-up time and memory, training memory, each against the plan."""
    rows = ["| case | rank | parameters | start-up s | start-up GB (plan) | training GB (plan) | steps s | "
            "global step |", "|---|---|---|---|---|---|---|---|"]
    for case, res in results.items():
        plan = res["plan"]
        for i, r in enumerate(res["ranks"]):
            train = "-" if r.get("train_model_gb") is None else f"{r['train_model_gb']:.2f} ({plan['total_gb']:.2f})"
            rows.append(f"| {case} | {i} | {r['parameters'] / 1e9:.3f}B | {r['startup_s']:.1f} | "
                        f"{r['startup_model_gb']:.2f} ({plan['startup_gb']:.2f}) | {train} | "
                        f"{', '.join(f'{t:.1f}' for t in r['step_s']) or '-'} | {r['global_step']} |")
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/sharded_init.json")
    p.add_argument("--work", type=Path, default=Path("/tmp/mot_sharded_init"))
    p.add_argument("--cases", default=",".join(CASES))
    p.add_argument("--summary", action="store_true", help="print the table of --out's results and stop")
    a = p.parse_args()
    if a.summary:
        print(summary(json.loads(a.out.read_text())))
        return
    a.work.mkdir(parents=True, exist_ok=True)
    if not (a.work / "tokenizers").exists():  # demo corpus + tokenizer files, outside the timings
        mot_fit(["--config", SPEECH, "--config", "configs/model/tiny.yaml", "--trainer.fast_dev_run", "1",
                 *common(a.work, "prepare")], a.work / "prepare.log")
    results = json.loads(a.out.read_text()) if a.out.exists() else {}
    for case in a.cases.split(","):
        configs, extra, _, _ = CASES[case]
        probe = a.work / "probe" / case
        last = sorted((a.work / "runs" / "meta_fit").glob("*/*/*/checkpoints/last.ckpt"))
        extra = [str(last[0]) if x == "META_FIT_LAST" and last else x for x in extra]
        args = [x for c in configs for x in ("--config", c)] + common(a.work, case) + extra + [
            "--trainer.callbacks+=benchmarks.memory_probe.MemoryProbe", "--trainer.callbacks.out", str(probe)]
        wait_for_memory(CASES[case][3] * 6.0 if case.startswith("meta") else 7.0)
        wall = mot_fit(args, a.work / f"{case}.log")
        ranks = measured(probe)
        results[case] = {"command": "mot fit " + " ".join(args), "wall_s": wall, "ranks": ranks,
                         "plan": planned(case, ranks[0], args)}
        r, plan = ranks[0], results[case]["plan"]
        print(f"{case}: {len(ranks)} rank(s), {r['parameters'] / 1e9:.3f}B parameters, "
              f"start-up {r['startup_s']:.1f} s, "
              f"start-up model memory {r['startup_model_gb']:.2f} GB (plan {plan['startup_gb']:.2f}), training "
              f"{r['train_model_gb'] or 0:.2f} GB (plan {plan['total_gb']:.2f} = {plan['terms_gb']}), "
              f"steps {r['step_s']}", flush=True)
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
