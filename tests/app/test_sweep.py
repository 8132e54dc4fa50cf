"""`mot sweep`: the grid and points it plans, and a real 2 sizes x 2 variants x 2 seeds sweep compared with
intervals, one size and size by size."""
from __future__ import annotations

import csv
import itertools
import json
import shlex

import pytest
import yaml

from mot_lightning.commands.compare import main as compare_main
from mot_lightning.commands.main import main as mot_main
from mot_lightning.commands.sweep import Job, lane_env, lane_threads, plan, run_jobs, scaling_command
from tests.app.conftest import CONFIGS, TINY, data_args

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


def test_points_set_values_together_and_a_variant_may_run_at_some():
    sweep = {"variants": {"a": "x.yaml", "b": {"config": "y.yaml", "points": ["big"]}}, "seeds": [0],
             "points": {"small": {"model.backbone.dim": 32, "trainer.max_steps": 10},
                        "big": {"model.backbone.dim": 64, "trainer.max_steps": 20}},
             "grid": {"model.lr": [0.1]}, "args": {"model.backbone.dim": 8}}
    jobs = plan(sweep, "exp")
    assert [j.group for j in jobs] == ["exp/a/small,lr=0.1", "exp/a/big,lr=0.1", "exp/b/big,lr=0.1"]
    args = list(jobs[1].args)
    assert args[args.index("--trainer.max_steps") + 1] == "20"
    assert args[len(args) - 1 - args[::-1].index("--model.backbone.dim") + 1] == "64"  # the point wins over args
    assert scaling_command(sweep, "exp", "runs") == "mot compare --scaling runs/exp --baseline a"
    assert scaling_command({**sweep, "variants": {"x/a": "x.yaml", "y/b": "y.yaml"}}, "exp", "runs") is None
    with pytest.raises(ValueError, match="variant 'b': unknown points \\['huge'\\]"):
        plan({**sweep, "variants": {"b": {"config": "y.yaml", "points": ["huge"]}}}, "exp")


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
def test_a_2_size_sweep_runs_and_compares_with_intervals_and_size_by_size(demo_env, tmp_path, monkeypatch, capsys):
    """2 sizes (a grid over dim) x dense, MoT x 2 seeds, two at a time; the plain comparison of one size with
    intervals, and the scaling comparison grouping the runs by the size each recorded."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    save = tmp_path / "runs"
    sweep = {"name": "pair", "save_dir": str(save), "seeds": [0, 1],
             "variants": {"dense": str(CONFIGS / "speech/dense.yaml"), "mot": str(CONFIGS / "speech/mot.yaml")},
             "grid": {"model.backbone.dim": [16, 32]},  # the tiny model's widths, at two sizes
             "args": {"model.backbone.n_layers": 2, "model.backbone.n_heads": 4, "trainer.max_steps": 3,
                      "trainer.val_check_interval": 3, "trainer.limit_val_batches": 1,
                      "trainer.num_sanity_val_steps": 0, "trainer.log_every_n_steps": 1,
                      "throughput.log_every_n_steps": 1}}
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(sweep))
    # two lanes: the runs go two at a time, each writing its own log beside its runs
    mot_main(["sweep", "--config", str(tmp_path / "sweep.yaml"), "--jobs", "2", "--", *TINY, *data_args(demo_env)])
    out = capsys.readouterr().out
    assert "8/8 runs done" in out and f"mot compare --scaling {save}/pair --baseline dense" in out
    for variant, dim, seed in itertools.product(("dense", "mot"), (16, 32), (0, 1)):
        assert "max_steps=3" in (save / "sweep_logs" / "pair" / variant / f"dim={dim}" / f"s{seed}.log").read_text()
    for variant, dim in itertools.product(("dense", "mot"), (16, 32)):
        runs = sorted((save / "pair" / variant / f"dim={dim}").iterdir())
        assert [r.name.split("-")[0] for r in runs] == ["s0", "s1"]
        assert len({r.name.split("-")[1] for r in runs}) == 1  # seeds share the experiment's hash
        assert json.loads((runs[1] / "run.json").read_text())["seed"] == 1
    one_size = save / "pair" / "{}" / "dim=32"
    compare_main([str(one_size).format("mot"), "--baseline", str(one_size).format("dense"), "--out",
                  str(tmp_path / "c"), "--no-plots"])  # its plots: tests/compare/test_cli.py
    rows = {r["key"]: r for r in csv.DictReader((tmp_path / "c" / "table.csv").open())}
    val = rows["val/loss"]
    assert (val["n_base"], val["n_cand"], val["ratio_n"], val["pairing"]) == ("2", "2", "2", "by seed")
    assert float(val["ratio_lo"]) <= float(val["ratio"]) <= float(val["ratio_hi"])
    assert float(val["baseline_final_lo"]) < float(val["baseline_final_hi"])  # two seeds differ
    assert val["noise_n_seeds"] == "2" and val["noise_ratio_min"] != ""
    md = (tmp_path / "c" / "table.md").read_text()
    assert "| mot/dim=32 | val/loss | 2/2 (2 by seed) |" in md and "Noise floor" in md
    # size by size: the runs grouped by (arm, recorded size), MoT matched against dense at each size
    compare_main(["--scaling", str(save / "pair"), "--baseline", "dense", "--out", str(tmp_path / "s")])
    scaling = list(csv.DictReader((tmp_path / "s" / "scaling.csv").open()))
    image = [r for r in scaling if r["tag"] == "val/val_seen/loss_image"]
    assert [(r["candidate"], r["size"]) for r in image] == [("pair/mot", "dim=16"), ("pair/mot", "dim=32")]
    assert int(image[0]["params"]) < int(image[1]["params"])
    assert all(r["ratio_n"] == "2" and float(r["ratio_lo"]) <= float(r["ratio"]) <= float(r["ratio_hi"])
               and float(r["flops_baseline"]) > 0 for r in image)
    assert {r["tag"] for r in scaling} >= {"val/loss_text", "val/val_heldout/loss_text"}
    for png in ("scaling.png", "loss_vs_flops_sizes.png"):
        assert (tmp_path / "s" / png).stat().st_size > 5000


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
