"""Groups of seeds on synthetic curves whose intervals, s values and flags are known in closed form."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest

from mot_lightning.commands.compare import main
from mot_lightning.compare.groups import load_group
from mot_lightning.compare.report import Smoothing, compare_groups
from mot_lightning.compare.runs import RunError, load_run
from mot_lightning.compare.stats import Interval, pair_by_seed
from tests.compare.events import write_run, write_version

T975 = {2: 4.302652729749464}  # Student t quantile 0.975 by degrees of freedom
STEPS = range(0, 1001, 50)
OFFSETS = (2.0, 2.1, 2.2)  # seed k's curves start at OFFSETS[k]


def test_interval_is_the_student_t_interval():
    iv = Interval.of([1.0, 2.0, 3.0])  # mean 2, sd 1, n 3
    half = T975[2] * 1.0 / math.sqrt(3)
    assert (iv.mean, iv.n) == (2.0, 3)
    assert iv.lo == pytest.approx(2.0 - half, rel=1e-9) and iv.hi == pytest.approx(2.0 + half, rel=1e-9)
    assert iv.text() == f"2.000 [{2 - half:.3f}, {2 + half:.3f}]"
    one = Interval.of([0.25])
    assert one.lo is None and one.text() == "0.250 [n/a (1 seed)]" and not one.excludes(1.0)


def test_interval_covers_the_true_mean_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    trials = 4000
    covered = sum(not Interval.of(rng.normal(1.0, 0.3, size=3)).excludes(1.0) for _ in range(trials))
    assert abs(covered / trials - 0.95) < 3 * math.sqrt(0.95 * 0.05 / trials)


def test_seeds_pair_by_number_else_by_order():
    assert pair_by_seed([0, 1, 2], [2, 0, 1]) == ([(0, 1), (1, 2), (2, 0)], "by seed")
    assert pair_by_seed([0, 1, 2], [0, 1]) == ([(0, 0), (1, 1)], "by seed")
    assert pair_by_seed([0, 1], [5, 6]) == ([(0, 0), (1, 1)], "by order")
    assert pair_by_seed([None], [None]) == ([(0, 0)], "single")


def _groups(root: Path, cand_curve, base_curve) -> tuple[Path, Path]:
    base, cand = root / "dense", root / "mot"
    for k, a in enumerate(OFFSETS):
        write_run(base, k, {"val/loss": [(s, base_curve(a, s, k)) for s in STEPS]}, {"model": {"dim": 32}})
        write_run(cand, k, {"val/loss": [(s, cand_curve(a, s, k)) for s in STEPS]}, {"model": {"dim": 64}})
    return base, cand


def _rows(base: Path, cand: Path):
    groups = [load_group(base, "dense"), load_group(cand, "mot")]
    (row,) = compare_groups(groups, 0, Smoothing(train=0.0, val=0.0))
    return row


def test_intervals_s_and_noise_floor_on_known_curves(tmp_path: Path):
    # baseline seed k: a_k - s/1000 (final a_k - 1); candidate seed k reaches a_k - 1 at step 400 + 100k,
    # then stays flat at a_k - 1.2: s = 0.4, 0.5, 0.6; final ratios 0.8, 0.9/1.1, 1.0/1.2.
    base, cand = _groups(tmp_path, lambda a, s, k: max(a - s / (400 + 100 * k), a - 1.2),
                         lambda a, s, k: a - s / 1000)
    row = _rows(base, cand)
    assert (row.n_base, row.n_cand, row.n_pairs, row.pairing) == (3, 3, 3, "by seed")
    finals = np.array([a - 1 for a in OFFSETS])
    half = T975[2] * finals.std(ddof=1) / math.sqrt(3)
    assert row.base_final.mean == pytest.approx(1.1, abs=1e-6)
    assert row.base_final.hi - row.base_final.mean == pytest.approx(half, rel=1e-5)
    ratios = np.array([(a - 1.2) / (a - 1) for a in OFFSETS])
    assert row.ratio.mean == pytest.approx(ratios.mean(), rel=1e-5)
    assert row.ratio.hi - row.ratio.mean == pytest.approx(T975[2] * ratios.std(ddof=1) / math.sqrt(3), rel=1e-4)
    s = row.s["s_steps"]
    assert s.values == pytest.approx([0.4, 0.5, 0.6], abs=1e-5)
    assert s.interval.hi - 0.5 == pytest.approx(T975[2] * 0.1 / math.sqrt(3), rel=1e-4)
    assert row.s["s_best"].values == pytest.approx([0.4, 0.5, 0.6], abs=1e-5)  # a falling baseline: best = final
    # Noise floor: baseline seed i reaches seed j's final (a_j - 1) at 1000 (1 - (a_j - a_i)) when a_i < a_j.
    assert (row.noise.s_steps.lo, row.noise.s_steps.hi) == pytest.approx((0.8, 0.9), abs=1e-5)
    assert (row.noise.ratio.lo, row.noise.ratio.hi) == pytest.approx((1.0 / 1.2, 1.2 / 1.0), abs=1e-5)
    assert row.noise.spread == pytest.approx(0.2, abs=1e-5)
    assert row.verdict == "lower" and not any("rises" in n or "brief" in n for n in row.notes)


def test_a_rising_baseline_is_flagged_and_s_best_is_not_fooled(tmp_path: Path):
    # Baseline: 1.5 -> 0.5 at step 500, then rises to 0.8 (memorising). Candidate: 1.5 -> 0.6 at 1000, linear.
    # Against the final value the candidate "wins" (s = 0.778); it never reaches the baseline's best 0.5.
    def base_curve(a, s, k):
        return (1.5 - s / 500 if s <= 500 else 0.5 + 0.3 * (s - 500) / 500) + 0.01 * k

    base, cand = _groups(tmp_path, lambda a, s, k: 1.5 - 0.0009 * s + 0.01 * k, base_curve)
    row = _rows(base, cand)
    assert row.s["s_steps"].values == pytest.approx([0.7 / 0.9] * 3, abs=1e-5)
    assert row.s["s_best"].values == [None, None, None] and row.s["s_best"].text() == "not reached (0/3)"
    (flag,) = [n for n in row.notes if n.startswith("baseline rises")]
    assert "by 0.3 > its seeds' spread 0.02" in flag


def test_a_brief_crossing_is_flagged(tmp_path: Path):
    write_run(tmp_path / "dense", 0, {"train/loss": [(s, 2.0 - s / 1000) for s in STEPS]})
    write_run(tmp_path / "mot", 0, {"train/loss": [(s, 0.5 if s == 500 else 1.5) for s in STEPS]},
              {"model": {"dim": 64}})
    row = _rows(tmp_path / "dense", tmp_path / "mot")
    assert row.s["s_steps"].values == pytest.approx([0.475])  # 1.5 -> 0.5 crosses 1.0 halfway, at 475
    assert row.ratio.text() == "1.500 [n/a (1 seed)]" and row.verdict == "n/a (1 seed)"
    assert any(n.startswith("brief crossing in 1/1 pairs") for n in row.notes)
    assert row.noise.text() == "n/a (1 seed)"


def test_a_dir_mixing_experiments_is_refused_and_can_be_selected(tmp_path: Path):
    group = tmp_path / "speech" / "mot"
    kept = write_run(group, 0, {"val/loss": [(0, 1.0)]}, {"model": {"dim": 32}})
    write_run(group, 1, {"val/loss": [(0, 1.0)]}, {"model": {"dim": 32}})
    write_run(group, 0, {"val/loss": [(0, 1.0)]}, {"model": {"dim": 64}})
    with pytest.raises(RunError,
                       match=r"(?s)holds 2 different experiments.*@[0-9a-f]{8}.*model.dim: (32 -> 64|64 -> 32)"):
        load_group(group, "mot")
    h = kept.name.split("-")[1]
    selected = load_group(f"{group}@{h}", "mot")
    assert selected.seeds == [0, 1] and selected.hash == h


def test_versions_of_another_experiment_are_not_merged(tmp_path: Path):
    run = write_run(tmp_path / "mot", 0, {"train/loss": [(s, 1.0) for s in STEPS]})
    import yaml

    other = run / "version_1"
    write_version(other, {"train/loss": [(s, 0.5) for s in STEPS]})
    (other / "config.yaml").write_text(yaml.safe_dump({"seed_everything": 0, "model": {"dim": 99}}))
    with pytest.raises(RunError, match=r"version_1 belong to another experiment.*model.dim: 32 -> 99"):
        load_run(run)
    # A validate launch written the old way (config.yaml with `verbose`) is skipped, not merged.
    (other / "config.yaml").write_text(yaml.safe_dump({"seed_everything": 0, "model": {"dim": 32}, "verbose": True}))
    loaded = load_run(run)
    assert [v.name for v in loaded.versions] == ["version_0"] and "skipped version_1" in loaded.notes[0]


def test_cli_writes_interval_tables_and_plots(tmp_path: Path, capsys):
    base, cand = _groups(tmp_path, lambda a, s, k: max(a - s / (400 + 100 * k), a - 1.2),
                         lambda a, s, k: a - s / 1000)
    out = tmp_path / "out"
    main([str(cand), "--baseline", str(base), "--out", str(out)])
    printed = capsys.readouterr().out
    assert "dense: 3 seeds (0, 1, 2); config hash" in printed and "noise floor" in printed
    (row,) = list(csv.DictReader((out / "table.csv").open()))
    assert row["group"] == tmp_path.name + "/mot" and row["n_pairs"] if "n_pairs" in row else True
    assert (row["n_base"], row["n_cand"], row["ratio_n"], row["pairing"]) == ("3", "3", "3", "by seed")
    assert float(row["s_steps"]) == pytest.approx(0.5, abs=1e-5) and row["s_steps_reached"] == "3/3"
    assert float(row["noise_s_min"]) == pytest.approx(0.8, abs=1e-5) and row["verdict"] == "lower"
    md = (out / "table.md").read_text()
    assert "| val/loss | 3/3 (3 by seed) |" in md and "Noise floor" in md
    for axis in ("steps", "time"):
        assert (out / f"loss_vs_{axis}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
