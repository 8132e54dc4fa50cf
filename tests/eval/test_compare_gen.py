"""`mot compare` reads generation metrics (val/gen/*) beside the losses and matches them in their direction."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest

from mot_lightning.commands.compare import main
from mot_lightning.compare.runs import direction
from tests.compare.events import write_run

STEPS = range(0, 1001, 100)
SEEDS = (0, 1, 2)


def test_directions_by_metric_name():
    assert direction("val/loss") == direction("val/gen/fid") == direction("val/gen/kid_inception") == "lower"
    assert direction("val/gen/wer") == direction("val/gen/cer") == "lower"
    assert direction("val/gen/faithfulness_all") == direction("val/gen/heldout/bleu") == "higher"
    assert direction("val/gen/tts_duration_ratio") is None


def _write(root: Path) -> tuple[Path, Path]:
    """Per seed k: the baseline's accuracy rises 0.1 -> 0.6 linearly over 1000 steps, the candidate's twice as
    fast then flat at 0.7 (+0.01 k each), so it reaches 0.6 at step 500; FID falls 10 -> 5 (baseline) and
    10 -> 4 at step 600 (candidate); both log a duration ratio (no direction) and a loss."""
    base, cand = root / "dense", root / "mot"
    for k in SEEDS:
        acc_b = [(s, 0.1 + 0.5 * s / 1000 + 0.01 * k) for s in STEPS]
        acc_c = [(s, min(0.1 + s / 1000, 0.7) + 0.01 * k) for s in STEPS]
        fid_b = [(s, 10 - 5 * s / 1000 + 0.1 * k) for s in STEPS]
        fid_c = [(s, max(10 - 10 * s / 1000, 4.0) + 0.1 * k) for s in STEPS]
        loss = [(s, 2 - s / 1000) for s in STEPS]
        ratio = [(s, 1.0 + 0.01 * k) for s in STEPS]
        write_run(base, k, {"val/loss": loss, "val/gen/faithfulness_all": acc_b, "val/gen/fid": fid_b,
                            "val/gen/tts_duration_ratio": ratio}, {"model": {"dim": 32}})
        write_run(cand, k, {"val/loss": loss, "val/gen/faithfulness_all": acc_c, "val/gen/fid": fid_c,
                            "val/gen/tts_duration_ratio": ratio}, {"model": {"dim": 64}})
    return base, cand


def test_gen_metrics_get_rows_matched_in_their_direction(tmp_path: Path, capsys):
    base, cand = _write(tmp_path)
    out = tmp_path / "out"
    main([str(cand), "--baseline", str(base), "--out", str(out), "--no-plots"])
    printed = capsys.readouterr().out
    assert "val/gen/faithfulness_all" in printed and "val/gen/fid" in printed
    rows = {r["key"]: r for r in csv.DictReader((out / "table.csv").open())}
    assert list(rows) == ["val/loss", "val/gen/faithfulness_all", "val/gen/fid", "val/gen/tts_duration_ratio"]
    acc = rows["val/gen/faithfulness_all"]
    # the candidate rises to the baseline's final 0.6 + 0.01 k at step 500 in every seed pair: s = 0.5
    assert float(acc["s_steps"]) == pytest.approx(0.5, abs=1e-6) and acc["s_steps_reached"] == "3/3"
    assert float(acc["final"]) == pytest.approx(0.71, abs=1e-6) and acc["verdict"] == "higher (better)"
    assert "falls" not in acc["note"]  # a rising accuracy is not a baseline getting worse
    fid = rows["val/gen/fid"]
    assert float(fid["s_steps"]) == pytest.approx(0.5, abs=1e-6) and fid["verdict"] == "lower (better)"
    ratio = rows["val/gen/tts_duration_ratio"]
    assert ratio["s_steps"] == "" and float(ratio["final"]) == pytest.approx(1.01, abs=1e-6)
    assert "n/a (no direction)" in (out / "table.md").read_text()


def test_a_falling_accuracy_baseline_is_flagged(tmp_path: Path):
    base, cand = tmp_path / "dense", tmp_path / "mot"
    for k in SEEDS:  # baseline peaks at 0.8 (step 500) and ends at 0.5: worse than its best
        peak = [(s, (0.3 + s / 1000 if s <= 500 else 0.8 - 0.6 * (s - 500) / 1000) + 0.001 * k) for s in STEPS]
        write_run(base, k, {"val/loss": [(s, 1.0) for s in STEPS], "val/gen/bleu": peak}, {"model": {"dim": 32}})
        write_run(cand, k, {"val/loss": [(s, 1.0) for s in STEPS],
                            "val/gen/bleu": [(s, 0.3 + 0.4 * s / 1000 + 0.001 * k) for s in STEPS]},
                  {"model": {"dim": 64}})
    main([str(cand), "--baseline", str(base), "--out", str(tmp_path / "out"), "--no-plots"])
    rows = {r["key"]: r for r in csv.DictReader((tmp_path / "out" / "table.csv").open())}
    bleu = rows["val/gen/bleu"]
    assert "baseline falls: final worse than best by 0.3" in bleu["note"]
    assert float(bleu["s_steps"]) == pytest.approx(0.5, abs=1e-6)  # rises to 0.5 + 0.001 k at step 500
    assert bleu["s_best_reached"] == "0/3"  # never reaches the baseline's best 0.8
