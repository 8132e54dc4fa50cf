"""The README quickstart's expected losses, read from its run's TensorBoard event files.

    mot fit --config configs/speech/mot.yaml                    # the quickstart (README, command 1)
    python benchmarks/quickstart_losses.py runs/speech/mot/s0-<hash> --wall "3 min 23 s"

Writes ``benchmarks/results/quickstart.json``: the training losses per modality at the first logged step
and the last step, and the validation losses (both sets, and each set) at the last validation.
"""
from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch

from mot_lightning.compare.runs import RunError, load_run

MODALITIES = ("text", "image", "speech")
VAL_SETS = ("val_seen", "val_heldout")


def read(run_dir: str) -> dict:
    """The losses of a run (its folder or one ``version_N``), read as ``mot compare`` reads runs."""
    try:
        scalars = load_run(run_dir).scalars
    except RunError as err:
        raise SystemExit(str(err)) from err

    def series(tag: str) -> dict[int, float]:
        if tag not in scalars:
            raise SystemExit(f"{run_dir} has no scalar {tag!r}: is it a quickstart run?")
        return {int(step): float(value) for step, value in zip(scalars[tag].steps, scalars[tag].values)}

    def at(tag: str, step: int) -> float:
        values = series(tag)
        if step not in values:  # a logged batch without this modality has no loss for it
            raise SystemExit(f"{run_dir}: {tag!r} has no value at step {step} (logged at {len(values)} other "
                             "steps): is it a quickstart run?")
        return values[step]

    first, last = min(series("train/loss_text")), max(series("train/loss_text"))
    val_step = max(series("val/loss_text"))
    out = {"train_first_step": first, "train_last_step": last, "val_step": val_step,
           "train_first": {m: at(f"train/loss_{m}", first) for m in MODALITIES},
           "train_last": {m: at(f"train/loss_{m}", last) for m in MODALITIES},
           "val": {m: at(f"val/loss_{m}", val_step) for m in MODALITIES}}
    for name in VAL_SETS:
        out[name] = {m: at(f"val/{name}/loss_{m}", val_step) for m in MODALITIES}
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="the quickstart's run folder (runs/speech/mot/s0-<hash>)")
    p.add_argument("--wall", default=None, help="the run's measured wall time, recorded as given")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "quickstart.json"))
    args = p.parse_args(argv)
    report = {"command": "mot fit --config configs/speech/mot.yaml", "seed": 0, "wall": args.wall,
              "machine": {"platform": platform.platform(), "torch": torch.__version__,
                          "threads": torch.get_num_threads()},
              "losses": read(args.run_dir)}
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(json.dumps(report["losses"], indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
