"""`mot compare` end to end on event files written by the test."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest

from mot_lightning.commands import main as mot_cli
from mot_lightning.commands.compare import main
from tests.compare.events import linear, write_version

STEPS = range(0, 1001, 100)


def _pair(root: Path) -> tuple[Path, Path]:
    """dense: loss 2 - s/1000 (final 1.0 at 1000), 1 s/step; mot: 2 - s/450 (reaches 1.0 at 450), 2 s/step,
    1.5x the FLOPs per step; both have text, only mot has speech."""
    dense, mot = root / "runs" / "speech" / "dense", root / "runs" / "speech" / "mot"
    write_version(dense / "version_0", {"train/loss": linear(STEPS, 2.0, 1 / 1000),
                                        "val/val_seen/loss_text": linear(STEPS, 2.0, 1 / 1000),
                                        "train/total_flops": [(s, 2.0 * s) for s in STEPS]}, sec_per_step=1.0)
    write_version(mot / "version_0", {"train/loss": linear(STEPS, 2.0, 1 / 450),
                                      "val/val_seen/loss_text": linear(STEPS, 3.0, 1 / 1000),
                                      "train/loss_speech": linear(STEPS, 2.0, 1 / 1000),
                                      "train/total_flops": [(s, 3.0 * s) for s in STEPS]}, sec_per_step=2.0)
    return dense, mot


def test_end_to_end_table_files_and_plots(tmp_path: Path, capsys):
    dense, mot = _pair(tmp_path)
    out = tmp_path / "out"
    main([str(mot), str(dense), "--out", str(out), "--smoothing", "0"])  # dense picked as baseline though second
    printed = capsys.readouterr().out
    assert "baseline: speech/dense" in printed and "not reached" in printed
    assert "speech/dense: 1 seed (?); no run.json" in printed
    rows = {r["key"]: r for r in csv.DictReader((out / "table.csv").open())}
    assert set(rows) == {"train/loss", "train/loss_speech", "val/val_seen/loss_text"}
    loss = rows["train/loss"]
    assert loss["group"] == "speech/mot" and (loss["ratio_n"], loss["ratio_lo"]) == ("1", "")  # one seed
    assert float(loss["s_steps"]) == pytest.approx(0.45, abs=1e-4)
    assert float(loss["s_flops"]) == pytest.approx(1.5 * 0.45, abs=1e-4)
    assert float(loss["s_time"]) == pytest.approx(2.0 * 0.45, abs=1e-4)
    assert float(loss["baseline_final"]) == pytest.approx(1.0, abs=1e-6)
    assert loss["verdict"] == "n/a (1 seed)"
    text = rows["val/val_seen/loss_text"]
    assert text["s_steps"] == "" and text["s_steps_reached"] == "0/1"
    assert rows["train/loss_speech"]["note"].startswith("n/a: baseline speech/dense never logged")
    md = (out / "table.md").read_text()
    assert "| speech/mot | train/loss | 1/1 (1 single) | 1.000 [n/a (1 seed)] |" in md
    assert "| 0.450 [n/a (1 seed)] |" in md
    for axis in ("steps", "flops", "time"):
        png = out / f"loss_vs_{axis}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_baseline_flag_overrides_the_default(tmp_path: Path, capsys):
    dense, mot = _pair(tmp_path)
    main([str(dense), "--baseline", str(mot), "--out", str(tmp_path / "o"), "--no-plots", "--smoothing", "0"])
    assert "baseline: speech/mot" in capsys.readouterr().out
    rows = {r["key"]: r for r in csv.DictReader((tmp_path / "o" / "table.csv").open())}
    assert rows["train/loss"]["group"] == "speech/dense" and rows["train/loss"]["s_steps_reached"] == "0/1"
    assert float(rows["val/val_seen/loss_text"]["s_steps"]) == pytest.approx(0.0)  # below 2.0 from the start
    assert not list((tmp_path / "o").glob("*.png"))


def test_missing_dir_is_a_message_not_a_traceback(tmp_path: Path):
    dense, _ = _pair(tmp_path)
    with pytest.raises(SystemExit) as exc:
        mot_cli.main(["compare", str(dense), str(tmp_path / "runs" / "speech" / "moe")])  # through `mot`
    message = str(exc.value.code)
    assert message.startswith("mot compare: ") and "moe: no such directory" in message
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="empty: no runs in it"):
        main([str(dense), str(tmp_path / "empty")])


def test_bad_arguments_are_messages(tmp_path: Path):
    dense, mot = _pair(tmp_path)
    with pytest.raises(SystemExit, match="at least two groups"):
        main([str(dense)])
    with pytest.raises(SystemExit, match=r"--smoothing must be in \[0, 1\)"):
        main([str(dense), str(mot), "--smoothing", "1.5"])
