"""Step matching on synthetic curves whose answers are known in closed form."""
from __future__ import annotations

import numpy as np
import pytest

from mot_lightning.compare.matching import Series, first_crossing, match_curves, smooth

STEPS = np.arange(0, 1001, 100)  # 0, 100, ..., 1000
BASE = Series.of(STEPS, 2.0 - STEPS / 1000)  # final loss 1.0 at step 1000


def test_exact_crossing_between_logged_points_is_interpolated():
    run = Series.of(STEPS, 2.0 - STEPS / 450)  # reaches 1.0 at step 450, between 400 and 500
    m = match_curves(run, BASE)
    assert m.match_step == pytest.approx(450.0)
    assert m.s_steps == pytest.approx(0.45)
    assert m.base_final == pytest.approx(1.0)
    assert m.final == pytest.approx(2.0 - 1000 / 450)
    assert m.ratio == pytest.approx(m.final / 1.0)


def test_crossing_on_a_logged_point_and_the_baseline_against_itself():
    assert match_curves(Series.of(STEPS, 2.0 - STEPS / 500), BASE).s_steps == pytest.approx(0.5)
    assert match_curves(BASE, BASE).s_steps == pytest.approx(1.0)


def test_never_matching_curve_is_undefined_and_says_so():
    run = Series.of(STEPS, 3.0 - STEPS / 1000)  # ends at 2.0 > 1.0
    m = match_curves(run, BASE, run_flops=BASE, base_flops=BASE)
    assert m.match_step is None and m.s_steps is None and m.s_flops is None and m.s_time is None
    assert m.notes == ["not reached"]
    assert m.ratio == pytest.approx(2.0)


def test_run_below_target_at_its_first_point_matches_there():
    steps = np.arange(100, 1001, 100)
    m = match_curves(Series.of(steps, np.full(len(steps), 0.5)), BASE)
    assert m.match_step == 100.0
    assert m.s_steps == pytest.approx(0.1)


def test_smoothing_matters_on_a_noisy_curve():
    # Linear trends logged every 10 steps; an EMA with factor f lags a line by f/(1-f) points
    # (4 points = 40 steps at f=0.8), the same for both curves once the start transient has died:
    # smoothed target = base(960) = 1.04; the run (twice as fast) smoothed reaches it at s - 40 = 480.
    steps = np.arange(0, 1001, 10)
    base = Series.of(steps, 2.0 - steps / 1000)
    clean = 2.0 - steps / 500
    noise = 0.2 * np.where(np.arange(len(steps)) % 2 == 0, 1.0, -1.0)
    noisy = Series.of(steps, clean + noise)
    assert match_curves(Series.of(steps, clean), base, factor=0.8).s_steps == pytest.approx(0.52, abs=1e-3)
    # Unsmoothed, the first downward spike (clean - 0.2) hits the raw final 1.0 at step 400.
    assert match_curves(noisy, base, factor=0.0).s_steps == pytest.approx(0.40, abs=0.011)
    # Smoothed, the alternating noise shrinks to 0.2 * 0.2/1.8 = 0.022 (about 11 steps of trend).
    assert match_curves(noisy, base, factor=0.8).s_steps == pytest.approx(0.52, abs=0.012)


def test_flops_and_wall_clock_axes():
    # The run costs 1.5x the FLOPs per step but takes half the time per step.
    run = Series.of(STEPS, 2.0 - STEPS / 450, times=0.5 * STEPS)
    base = Series.of(STEPS, BASE.values, times=1.0 * STEPS)
    m = match_curves(run, base, run_flops=Series.of(STEPS, 3.0 * STEPS), base_flops=Series.of(STEPS, 2.0 * STEPS))
    assert m.s_steps == pytest.approx(0.45)
    assert m.s_flops == pytest.approx(3.0 * 450 / (2.0 * 1000))
    assert m.s_time == pytest.approx(0.5 * 450 / 1000)


def test_missing_flops_leaves_only_that_axis_undefined():
    m = match_curves(Series.of(STEPS, 2.0 - STEPS / 450), BASE, run_flops=None, base_flops=BASE)
    assert m.s_steps == pytest.approx(0.45) and m.s_flops is None
    assert m.notes == ["no train/total_flops in run"]


def test_smooth_is_an_ema_from_the_first_value():
    np.testing.assert_allclose(smooth(np.array([1.0, 0.0, 0.0]), 0.5), [1.0, 0.5, 0.25])
    np.testing.assert_array_equal(smooth(np.array([3.0, 1.0, 2.0]), 0.0), [3.0, 1.0, 2.0])
    with pytest.raises(ValueError, match="smoothing factor"):
        smooth(np.array([1.0]), 1.0)


def test_first_crossing_edge_cases():
    steps, values = np.array([0.0, 10.0]), np.array([2.0, 1.0])
    assert first_crossing(steps, values, 1.5) == pytest.approx(5.0)
    assert first_crossing(steps, values, 0.5) is None
    assert first_crossing(steps, values, 2.0) == 0.0
