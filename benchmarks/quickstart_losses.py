"""The README quickstart's expected losses, read from its run's TensorBoard event files.

    mot fit --config configs/speech/mot.yaml                    # the quickstart (README, command 1)
    python benchmarks/quickstart_losses.py runs/speech/mot/s0-<hash>/version_0 --wall "3 min 23 s"

Writes ``benchmarks/results/quickstart.json``: the training losses per modality at the first logged step
and the last step, and the validation losses (both sets, and each set) at the last validation.
"""
from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

MODALITIES = ("text", "image", "speech")
VAL_SETS = ("val_seen", "val_heldout")


def read(version_dir: str) -> dict:
    events = EventAccumulator(version_dir, size_guidance={"scalars": 0})
    events.Reload()
    scalars = {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}

    def series(tag: str) -> dict[int, float]:
        if tag not in scalars:
            raise SystemExit(f"{version_dir} has no scalar {tag!r}: is it a quickstart run's version folder?")
        return scalars[tag]

    first, last = min(series("train/loss_text")), max(series("train/loss_text"))
    val_step = max(series("val/loss_text"))
    out = {"train_first_step": first, "train_last_step": last, "val_step": val_step,
           "train_first": {m: series(f"train/loss_{m}")[first] for m in MODALITIES},
           "train_last": {m: series(f"train/loss_{m}")[last] for m in MODALITIES},
           "val": {m: series(f"val/loss_{m}")[val_step] for m in MODALITIES}}
    for name in VAL_SETS:
        out[name] = {m: series(f"val/{name}/loss_{m}")[val_step] for m in MODALITIES}
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("version_dir", help="the run's TensorBoard folder (runs/speech/mot/s0-<hash>/version_0)")
    p.add_argument("--wall", default=None, help="the run's measured wall time, recorded as given")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "quickstart.json"))
    args = p.parse_args(argv)
    report = {"command": "mot fit --config configs/speech/mot.yaml", "seed": 0, "wall": args.wall,
              "machine": {"platform": platform.platform(), "torch": torch.__version__,
                          "threads": torch.get_num_threads()},
              "losses": read(args.version_dir)}
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(json.dumps(report["losses"], indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
