"""Sampling errors of generation metrics (``val/gen_se/<metric>``) in `mot compare`: read at the metric's final
step, floor the intervals, give the verdict ``within sampling error`` and size the samples needed; runs without
them compare as before. Values are dyadic fractions so the float32 event files hold them exactly."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest

from mot_lightning.commands.compare import main
from mot_lightning.compare.groups import load_group
from mot_lightning.compare.report import Smoothing, compare_groups
from mot_lightning.compare.runs import load_run
from mot_lightning.compare.stats import Z_POWER, Z_SAMPLING
from tests.compare.events import write_run

STEPS = range(0, 1001, 250)
SEEDS = (0, 1, 2)
ACC = "val/gen/faithfulness_all"
ACC_SE = "val/gen_se/faithfulness_all"


def _write(root: Path, base_finals, cand_finals, base_se=None, cand_se=None, base_n=None, cand_n=None,
           se_steps=STEPS) -> tuple[Path, Path]:
    """Per seed k an accuracy rising linearly to its final (base_finals[k] / cand_finals[k]) at step 1000, with
    its sampling SE (when given) logged at ``se_steps``, and a sample count in the description (when given)."""
    dirs = root / "dense", root / "mot"
    spec = ((base_finals, base_se, base_n, 32), (cand_finals, cand_se, cand_n, 64))
    for group, (finals, ses, counts, dim) in zip(dirs, spec):
        for k in SEEDS:
            scalars = {"val/loss": [(s, 2 - s / 1000) for s in STEPS],
                       ACC: [(s, finals[k] * (0.5 + s / 2000)) for s in STEPS]}
            if ses is not None:  # a larger SE before the final step: only the final one counts
                scalars[ACC_SE] = [(s, ses[k] if s == STEPS[-1] else 4 * ses[k]) for s in se_steps]
            described = {} if counts is None else {ACC: f"{counts[k]} samples. faithfulness over all prompts"}
            write_run(group, k, scalars, {"model": {"dim": dim}}, descriptions=described)
    return dirs


def _row(base: Path, cand: Path, detect: float | None = None):
    groups = [load_group(base, "dense"), load_group(cand, "mot")]
    return {r.key: r for r in compare_groups(groups, 0, Smoothing(train=0.0, val=0.0), detect=detect)}


def test_se_is_read_at_the_final_step_and_never_compared(tmp_path: Path):
    base, _ = _write(tmp_path, [0.5] * 3, [0.5] * 3, [0.0625] * 3, [0.0625] * 3, base_n=[200] * 3)
    run = load_group(base, "dense").runs[0]
    assert ACC_SE in run.scalars and ACC_SE not in run.compared_tags and run.compared_tags == ["val/loss", ACC]
    assert run.final_se(ACC) == 0.0625 and run.se_series(ACC).values[0] == 0.25  # 4x before the final step
    assert run.sample_count(ACC) == 200 and run.sample_count("val/loss") is None
    assert run.final_se("val/loss") is None
    # an SE series that stops before the metric's final step gives no final SE
    early, _ = _write(tmp_path / "early", [0.5] * 3, [0.5] * 3, [0.0625] * 3, [0.0625] * 3, se_steps=STEPS[:-1])
    assert load_run(next(early.iterdir())).final_se(ACC) is None


def test_a_difference_within_sampling_error_is_called_so(tmp_path: Path):
    # finals 0.5 + k/1024 vs 0.53125 + k/1024: a tight seed spread; the paired ratio's interval excludes 1.
    base_f = [0.5 + k / 1024 for k in SEEDS]
    cand_f = [0.53125 + k / 1024 for k in SEEDS]
    large, tiny = [0.03125] * 3, [2.0**-14] * 3
    # large SE: each mean's S = 0.03125 / sqrt(3); 1.96 sqrt(2) S = 0.05 > 0.03125
    row = _row(*_write(tmp_path / "large", base_f, cand_f, large, large))[ACC]
    assert row.final.mean - row.base_final.mean == pytest.approx(0.03125, abs=1e-7)
    assert row.base_final.sampling_se == pytest.approx(0.03125 / math.sqrt(3), rel=1e-6)
    assert Z_SAMPLING * math.hypot(row.base_final.sampling_se, row.final.sampling_se) > 0.03125
    assert row.verdict == "within sampling error"
    # the same values with a tiny SE: the verdict without SEs
    with_tiny = _row(*_write(tmp_path / "tiny", base_f, cand_f, tiny, tiny))[ACC]
    without = _row(*_write(tmp_path / "none", base_f, cand_f))[ACC]
    assert with_tiny.verdict == without.verdict == "higher (better)"
    assert without.base_final.sampling_se is None and without.samples is None


def test_the_final_interval_is_floored_by_sampling_error(tmp_path: Path):
    base_f = [0.5, 0.5 + 2.0**-12, 0.5 + 2.0**-11]  # nearly identical finals
    cand_f = [0.75, 0.75 + 2.0**-12, 0.75 + 2.0**-11]
    b_se, c_se = [0.03125, 0.0625, 0.09375], [0.0625, 0.0625, 0.125]
    row = _row(*_write(tmp_path, base_f, cand_f, b_se, c_se))[ACC]
    floor = Z_SAMPLING * math.sqrt(sum(se**2 for se in b_se)) / 3
    assert row.base_final.hi - row.base_final.mean == pytest.approx(floor, rel=1e-6)
    assert row.base_final.mean - row.base_final.lo == pytest.approx(floor, rel=1e-6)
    seed_half = 4.302652729749464 * np.std(base_f, ddof=1) / math.sqrt(3)  # what the seeds alone would give
    assert seed_half < floor / 10
    assert row.base_final.se == pytest.approx(floor / Z_SAMPLING, rel=1e-6)
    # the ratio's floor by the delta method over the seed pairs
    b, c = np.array(base_f), np.array(cand_f)
    var = (np.square(c_se) + (c / b) ** 2 * np.square(b_se)) / b**2
    ratio_floor = Z_SAMPLING * math.sqrt(var.sum()) / 3
    assert row.ratio.hi - row.ratio.mean == pytest.approx(ratio_floor, rel=1e-5)


def _needed(diff: float, b_se, c_se) -> float:
    s2 = (math.sqrt(sum(x**2 for x in b_se)) / 3) ** 2 + (math.sqrt(sum(x**2 for x in c_se)) / 3) ** 2
    return ((Z_SAMPLING + Z_POWER) * math.sqrt(s2) / diff) ** 2


def test_samples_needed_is_the_power_formula(tmp_path: Path):
    base_f, cand_f = [0.5] * 3, [0.625] * 3  # diff 0.125
    b_se, c_se = [0.0625, 0.0625, 0.125], [0.125, 0.0625, 0.0625]
    factor = _needed(0.125, b_se, c_se)
    # unknown sample counts: a multiple of the current one
    row = _row(*_write(tmp_path / "unknown", base_f, cand_f, b_se, c_se))[ACC]
    assert row.samples.factor == pytest.approx(factor, rel=1e-9) and row.samples.count is None
    assert row.samples.text() == f"x{factor:.3g} N for Δ 0.125"
    # 200 samples per run, read from the descriptions: absolute numbers
    row = _row(*_write(tmp_path / "known", base_f, cand_f, b_se, c_se, [200] * 3, [200] * 3))[ACC]
    assert row.samples.count == pytest.approx(200 * factor, rel=1e-9) and row.samples.now == 200
    assert row.samples.text().startswith(f"{math.ceil(200 * factor):,} (x{factor:.3g} of 200)")
    # runs scored on different counts: per-sample variance se_i^2 n_i, averaged into each group mean
    counts = [100, 200, 400]
    row = _row(*_write(tmp_path / "mixed", base_f, cand_f, b_se, c_se, counts, counts))[ACC]
    v = sum(float(np.dot(np.square(se), counts)) / 9 for se in (b_se, c_se))
    assert row.samples.count == pytest.approx((Z_SAMPLING + Z_POWER) ** 2 * v / 0.125**2, rel=1e-9)
    assert row.samples.now is None
    # sized for a 5% difference of the baseline's mean instead (--detect 0.05)
    row = _row(*_write(tmp_path / "detect", base_f, cand_f, b_se, c_se, [200] * 3, [200] * 3), detect=0.05)[ACC]
    assert row.samples.diff == pytest.approx(0.025) and row.samples.count == pytest.approx(
        200 * _needed(0.025, b_se, c_se), rel=1e-9)


def test_cli_tables_show_the_sampling_columns(tmp_path: Path, capsys):
    b_se, c_se = [0.0625, 0.0625, 0.125], [0.125, 0.0625, 0.0625]
    base, cand = _write(tmp_path, [0.5] * 3, [0.625] * 3, b_se, c_se, [200] * 3, [200] * 3)
    out = tmp_path / "out"
    main([str(cand), "--baseline", str(base), "--out", str(out), "--no-plots", "--detect", "0.05"])
    printed = capsys.readouterr().out
    assert "sampling se (base/cand)" in printed and "samples needed" in printed and "0.05x difference" in printed
    rows = {r["key"]: r for r in csv.DictReader((out / "table.csv").open())}
    assert list(rows) == ["val/loss", ACC]  # val/gen_se/* is never a row
    acc, loss = rows[ACC], rows["val/loss"]
    assert float(acc["samples_needed"]) == math.ceil(200 * _needed(0.025, b_se, c_se))
    assert float(acc["samples_needed_x"]) == pytest.approx(_needed(0.025, b_se, c_se), rel=1e-6)
    assert (acc["samples_now"], float(acc["samples_diff"])) == ("200", pytest.approx(0.025))
    assert float(acc["baseline_sampling_se"]) == pytest.approx(math.sqrt(sum(x**2 for x in b_se)) / 3)
    assert all(loss[f] == "" for f in ("baseline_sampling_se", "sampling_se", "samples_needed", "samples_needed_x"))
    md = (out / "table.md").read_text()
    assert "| ratio | sampling se (base/cand) | samples needed | s (final) |" in md
    assert "within sampling error" in md and "| 0.051 / 0.051 | 13,067 (x65.3 of 200) for Δ 0.025 |" in md
    with pytest.raises(SystemExit, match="--detect is a relative difference > 0"):
        main([str(cand), "--baseline", str(base), "--out", str(out), "--detect", "-1"])


def test_without_se_tags_the_tables_are_unchanged(tmp_path: Path, capsys):
    base, cand = _write(tmp_path, [0.5] * 3, [0.625] * 3)
    out = tmp_path / "out"
    main([str(cand), "--baseline", str(base), "--out", str(out), "--no-plots"])
    printed = capsys.readouterr().out
    assert "sampling" not in printed and "samples needed" not in printed
    header = (out / "table.csv").read_text().splitlines()[0]
    assert "sampling" not in header and "samples" not in header
    assert "sampling" not in (out / "table.md").read_text()


def test_se_from_only_some_runs_is_not_used(tmp_path: Path):
    base, cand = _write(tmp_path, [0.5] * 3, [0.625] * 3, [0.0625] * 3)  # the candidate logged no SE
    row = _row(base, cand)[ACC]
    assert row.base_final.sampling_se is None and row.samples is None
    assert "sampling se logged by 3/6 runs only" in "; ".join(row.notes)
