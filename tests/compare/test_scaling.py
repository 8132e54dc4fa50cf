"""`mot compare --scaling` on event files with a known answer: arms of two sizes, grouped by the size each run
recorded, matched size by size."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest

from mot_lightning.commands.compare import main
from mot_lightning.compare.stats import Interval
from mot_lightning.model.accounting import backbone_stats
from mot_lightning.model.config import TransformerConfig
from tests.compare.events import write_run

STEPS = range(0, 1001, 10)
IMAGE, TEXT = "val/val_seen/loss_image", "val/val_seen/loss_text"
# per size: dense's image loss falls linearly from `start` to 1.0 at step 1000; MoT's seed k from the same start
# reaches 1.0 at step `reach[k]` (so s = reach / 1000) and keeps falling; FLOPs per step `flops`
SIZES = {"d32": {"dim": 32, "start": 2.0, "reach": (750, 850), "flops": 1e6},
         "d64": {"dim": 64, "start": 1.5, "reach": (400, 600), "flops": 4e6}}


def line(start: float, end: float, at: float) -> list[tuple[int, float]]:
    """From ``start`` at step 0 to ``end`` at step ``at``, straight on."""
    return [(s, start - (start - end) * s / at) for s in STEPS]


def backbone(dim: int, sparsity: str) -> dict:
    return {"model": {"backbone": {"dim": dim, "n_layers": 2, "n_heads": 4, "sparsity": sparsity}}}


def write_study(root: Path) -> Path:
    """study/{dense,mot,image_only}/<size>/s<seed>-<hash>: dense and MoT log image and text losses, the
    image-only arm the image loss alone (its dense's curve); MoT's text loss never reaches dense's."""
    study = root / "study"
    for name, size in SIZES.items():
        flops = [(s, size["flops"] * s) for s in STEPS]
        for seed in (0, 1):
            dense = {IMAGE: line(size["start"], 1.0, 1000), TEXT: line(3.0, 2.0, 1000),
                     "train/loss_image": line(2.0, 1.0, 1000), "train/total_flops": flops}
            mot = {IMAGE: line(size["start"], 1.0, size["reach"][seed]), TEXT: line(3.0, 2.5, 1000),
                   "train/loss_image": line(2.0, 1.0, 1000), "train/total_flops": flops}
            write_run(study / "dense" / name, seed, dense, backbone(size["dim"], "dense"))
            write_run(study / "mot" / name, seed, mot, backbone(size["dim"], "mot"))
            write_run(study / "image_only" / name, seed, {IMAGE: dense[IMAGE], "train/total_flops": flops},
                      backbone(size["dim"], "dense") | {"data": {"modalities": ["text", "image"]}})
    return study


def rows_of(out: Path) -> dict[tuple[str, str, str, str], dict]:
    records = csv.DictReader((out / "scaling.csv").open())
    return {(r["baseline"], r["candidate"], r["tag"], r["size"]): r for r in records}


def test_scaling_table_has_s_and_ratio_per_size(tmp_path: Path, capsys):
    study = write_study(tmp_path)
    out = tmp_path / "out"
    main(["--scaling", str(study), "--baseline", "dense", "--baseline", "image_only", "--out", str(out)])
    printed = capsys.readouterr().out
    assert "baselines: study/dense, study/image_only" in printed and "## val/val_seen/loss_image" in printed
    rows = rows_of(out)
    for name, size in SIZES.items():
        label = f"dim={size['dim']}"
        r = rows[("study/dense", "study/mot", IMAGE, label)]
        s = [reach / 1000 for reach in size["reach"]]
        start = size["start"]
        ratio = [start - (start - 1.0) * 1000 / reach for reach in size["reach"]]  # MoT's final / dense's 1.0
        assert float(r["s_steps"]) == pytest.approx(sum(s) / 2, abs=1e-6)
        assert float(r["s_steps_lo"]) == pytest.approx(Interval.of(s).lo, abs=1e-6)
        assert float(r["s_steps_hi"]) == pytest.approx(Interval.of(s).hi, abs=1e-6)
        assert float(r["ratio"]) == pytest.approx(sum(ratio) / 2, abs=1e-6)
        assert float(r["ratio_lo"]) == pytest.approx(Interval.of(ratio).lo, abs=1e-6)
        assert float(r["s_flops"]) == pytest.approx(sum(s) / 2, abs=1e-6)  # equal FLOPs per step
        assert (r["n_base"], r["ratio_n"], r["pairing"]) == ("2", "2", "by seed")
        # the size comes from the recorded widths; its parameters from the accounting, one tower for either arm
        cfg = TransformerConfig(dim=size["dim"], n_layers=2, n_heads=4, n_modalities=1, sparsity="dense")
        assert int(r["params"]) == backbone_stats(cfg, seq_len=1).total_params
        assert (r["dim"], r["n_layers"]) == (str(size["dim"]), "2")
        assert float(r["flops_baseline"]) == pytest.approx(size["flops"] * 1000)
        text = rows[("study/dense", "study/mot", TEXT, label)]
        assert text["s_steps_reached"] == "0/2" and float(text["ratio"]) == pytest.approx(1.25)
        # the image-only baseline has dense's image curve, and no text loss: MoT against it on images alone
        uni = rows[("study/image_only", "study/mot", IMAGE, label)]
        assert float(uni["s_steps"]) == pytest.approx(float(r["s_steps"]))
        assert float(rows[("study/dense", "study/image_only", IMAGE, label)]["ratio"]) == pytest.approx(1.0)
    assert not [k for k in rows if k[2] == TEXT and "image_only" in k[0] + k[1]]  # never logged there
    assert not [k for k in rows if k[2].startswith("train/")]  # the default tags: validation losses
    md = (out / "scaling.md").read_text()
    assert "| study/mot vs study/dense | dim=32 |" in md and "| study/mot vs study/dense | dim=64 |" in md
    for png in ("scaling.png", "loss_vs_flops_sizes.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (out / png).stat().st_size > 10000


def test_scaling_refuses_what_it_cannot_group(tmp_path: Path):
    study = write_study(tmp_path)
    with pytest.raises(SystemExit, match="--baseline moe: no such arm; the arms are study/dense"):
        main(["--scaling", str(study), "--baseline", "moe", "--no-plots", "--out", str(tmp_path / "o")])
    # another experiment at one size of an arm (another learning rate): not seeds of one experiment
    write_run(study / "mot" / "d64_lr", 2, {IMAGE: line(2.0, 1.0, 1000)},
              backbone(64, "mot") | {"optimizer": {"lr": 0.1}})
    with pytest.raises(SystemExit, match=r"runs of size dim=64 are 2 experiments .* differ in: optimizer.lr"):
        main(["--scaling", str(study), "--no-plots", "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit, match="is a run dir; --scaling takes the dir that holds the arms"):
        main(["--scaling", str(next((study / "dense" / "d32").iterdir())), "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit, match="d32 holds runs, not arms"):
        main(["--scaling", str(study / "dense" / "d32"), "--out", str(tmp_path / "o")])
