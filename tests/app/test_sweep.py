"""`mot sweep`: the grid it plans, and a real 2 variants x 2 seeds sweep compared with intervals."""
from __future__ import annotations

import csv
import itertools
import json
import shlex

import pytest
import yaml

from mot_lightning.commands.compare import main as compare_main
from mot_lightning.commands.main import main as mot_main
from mot_lightning.commands.sweep import Job, lane_env, lane_threads, plan, run_jobs
from tests.app.conftest import CONFIGS, TINY, TINY_MODEL, data_args

SHIPPED = CONFIGS / "sweeps/speech_dense_vs_mot.yaml"


def test_plan_orders_variants_grid_and_seeds_with_later_overrides_winning():
    sweep = {"variants": {"a": "x.yaml", "b": {"config": ["y.yaml", "z.yaml"], "args": {"model.lr": 0.5}}},
             "seeds": [3, 4], "grid": {"model.backbone.dim": [32, 64]}, "args": {"model.lr": 0.1, "t.flag": True}}
    jobs = plan(sweep, "exp", "out", ["--trainer.max_steps", "5"])
    assert [(j.group, j.seed) for j in jobs] == [
        (f"exp/{v}/dim={d}", s) for v in ("a", "b") for d in (32, 64) for s in (3, 4)]
    args = list(jobs[-1].args)
    assert args[:4] == ["--config", "y.yaml", "--config", "z.yaml"]
    assert args.index("0.5") > args.index("0.1") and args[args.index("--t.flag") + 1] == "true"
    assert args[-8:] == ["--trainer.logger.init_args.name", "exp/b/dim=64", "--seed_everything", "4",
                         "--data.seed", "4", "--trainer.max_steps", "5"]
    with pytest.raises(ValueError, match="unknown keys \\['seed'\\]"):
        plan({"variants": {"a": "x.yaml"}, "seed": [0]}, "exp")
    with pytest.raises(ValueError, match="variant 'a': give a config file"):
        plan({"variants": {"a": {"args": {}}}}, "exp")


def test_print_and_write_emit_one_command_per_run(tmp_path, capsys):
    mot_main(["sweep", "--config", str(SHIPPED), "--print"])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 6 and all(line.startswith("mot fit --config configs/speech/") for line in lines)
    assert sum("--seed_everything 2" in line for line in lines) == 2
    mot_main(["sweep", "--config", str(SHIPPED), "--write", str(tmp_path / "jobs.txt"),
              "--", "--trainer.max_steps", "9"])
    written = (tmp_path / "jobs.txt").read_text().splitlines()
    assert len(written) == 6 and all(shlex.split(line)[-2:] == ["--trainer.max_steps", "9"] for line in written)


@pytest.mark.slow
def test_a_2x2_sweep_runs_and_compares_with_intervals(demo_env, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    save = tmp_path / "runs"
    sweep = {"name": "pair", "save_dir": str(save), "seeds": [0, 1],
             "variants": {"dense": str(CONFIGS / "speech/dense.yaml"), "mot": str(CONFIGS / "speech/mot.yaml")},
             "args": {"trainer.max_steps": 3, "trainer.val_check_interval": 3, "trainer.limit_val_batches": 1,
                      "trainer.log_every_n_steps": 1, "throughput.log_every_n_steps": 1}}
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(sweep))
    # two lanes: the runs go two at a time, each writing its own log beside its runs
    mot_main(["sweep", "--config", str(tmp_path / "sweep.yaml"), "--jobs", "2", "--", *TINY_MODEL, *TINY,
              *data_args(demo_env)])
    out = capsys.readouterr().out
    assert f"mot compare {save}/pair/mot --baseline {save}/pair/dense" in out and "4/4 runs done" in out
    for variant, seed in itertools.product(("dense", "mot"), (0, 1)):
        assert "max_steps=3" in (save / "sweep_logs" / "pair" / variant / f"s{seed}.log").read_text()
    for variant in ("dense", "mot"):
        runs = sorted((save / "pair" / variant).iterdir())
        assert [r.name.split("-")[0] for r in runs] == ["s0", "s1"]
        assert len({r.name.split("-")[1] for r in runs}) == 1  # seeds share the experiment's hash
        assert json.loads((runs[1] / "run.json").read_text())["seed"] == 1
    compare_main([str(save / "pair" / "mot"), "--baseline", str(save / "pair" / "dense"), "--out", str(tmp_path / "c")])
    rows = {r["key"]: r for r in csv.DictReader((tmp_path / "c" / "table.csv").open())}
    val = rows["val/loss"]
    assert (val["n_base"], val["n_cand"], val["ratio_n"], val["pairing"]) == ("2", "2", "2", "by seed")
    assert float(val["ratio_lo"]) <= float(val["ratio"]) <= float(val["ratio_hi"])
    assert float(val["baseline_final_lo"]) < float(val["baseline_final_hi"])  # two seeds differ
    assert val["noise_n_seeds"] == "2" and val["noise_ratio_min"] != ""
    md = (tmp_path / "c" / "table.md").read_text()
    assert "| pair/mot | val/loss | 2/2 (2 by seed) |" in md and "Noise floor" in md
    assert (tmp_path / "c" / "loss_vs_steps.png").stat().st_size > 5000


def test_lanes_split_the_cores(monkeypatch):
    assert [lane_threads(n, cores=8) for n in (1, 2, 3, 8, 16)] == [8, 4, 2, 1, 1]
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert lane_env(2)["OMP_NUM_THREADS"] == str(lane_threads(2))
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the user's setting wins
    assert lane_env(2)["OMP_NUM_THREADS"] == "3"


def test_a_failing_lane_stops_the_sweep_naming_the_run(tmp_path, capsys):
    jobs = [Job("exp/a", 0, ("--config", str(tmp_path / "missing.yaml"))), Job("exp/b", 0, ("--no-such-flag",)),
            Job("exp/c", 0, ("--never-started",))]
    with pytest.raises(SystemExit, match=r"\(exp/[ab], seed 0\) failed; rerun it alone with"):
        run_jobs(jobs, keep_going=False, parallel=2, log_dir=tmp_path)
    assert "exp/c" not in capsys.readouterr().out  # no new run starts once one has failed
    logs = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.log"))
    assert logs == ["sweep_logs/exp/a/s0.log", "sweep_logs/exp/b/s0.log"]
    assert "missing.yaml" in (tmp_path / "sweep_logs" / "exp" / "a" / "s0.log").read_text()  # for the user
