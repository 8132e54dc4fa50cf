"""GenerationMetrics in real short `mot fit` runs: val/gen/* in TensorBoard (with descriptions) and in
`mot compare`; `mot eval` on a checkpoint writes its JSON and grid, the same for the same seed; all three
settings (discrete images, + speech, diffusion latents); a named world and scorer file. The speech runs are the
session's ``speech_runs`` (tests/conftest.py; their checkpoints also serve tests/app)."""
from __future__ import annotations

import csv
import json

import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mot_lightning.commands.compare import main as compare
from mot_lightning.commands.main import main as mot
from mot_lightning.eval.scorer import ScorerConfig, fit_scorer, save_scorer
from mot_lightning.eval.worlds import get_world
from tests.app.conftest import CONFIGS, TINY_MODEL, TRANSFUSION, data_args, run_dir, run_fit

FAITHFULNESS = [f"faithfulness_{a}" for a in ("colour", "shape", "size", "count", "position", "all")]
# speech_runs (tests/conftest.py): a dense and a MoT run, 2 steps, validation with GenerationMetrics after each


def _scalars(run):
    acc = EventAccumulator(str(max(run.glob("version_*"))), size_guidance={"scalars": 0})
    acc.Reload()
    return acc


@pytest.mark.slow
def test_metrics_are_in_tensorboard_with_their_sample_counts(speech_runs):
    acc = _scalars(run_dir(speech_runs / "speech" / "mot"))
    tags = set(acc.Tags()["scalars"])
    expected = {*FAITHFULNESS, *(f"heldout/{m}" for m in FAITHFULNESS), "fid", "kid", "caption_all", "bleu",
                "heldout/caption_all", "heldout/bleu", "wer", "cer", "tts_unit_acc", "tts_duration_ratio"}
    assert {f"val/gen/{m}" for m in expected} <= tags, sorted(tags)
    for name, n in (("faithfulness_all", 4), ("heldout/faithfulness_all", 2), ("fid", 4), ("wer", 2)):
        points = acc.Scalars(f"val/gen/{name}")
        assert [p.step for p in points] == [1, 2]
        assert 0 <= points[0].value or name == "fid"
        assert acc.SummaryMetadata(f"val/gen/{name}").summary_description.startswith(f"{n} samples.")
    assert "Floor" in acc.SummaryMetadata("val/gen/fid").summary_description
    for name in ("faithfulness_all", "fid", "bleu", "wer", "tts_unit_acc"):  # each metric's sampling error
        errors = acc.Scalars(f"val/gen_se/{name}")
        assert [p.step for p in errors] == [1, 2] and all(p.value >= 0 for p in errors), name
    assert "Ceiling" in acc.SummaryMetadata("val/gen/faithfulness_all").summary_description


@pytest.mark.slow
def test_mot_compare_reports_the_generation_metrics(speech_runs, tmp_path, capsys):
    out = tmp_path / "compare"
    compare([str(speech_runs / "speech" / "mot"), "--baseline", str(speech_runs / "speech" / "dense"),
             "--out", str(out), "--no-plots"])
    assert "val/gen/faithfulness_all" in capsys.readouterr().out
    rows = {r["key"]: r for r in csv.DictReader((out / "table.csv").open())}
    for key in ("val/gen/faithfulness_all", "val/gen/fid", "val/gen/wer", "val/gen/tts_duration_ratio"):
        assert key in rows and rows[key]["final"] != "", key
    assert rows["val/gen/tts_duration_ratio"]["s_steps_reached"] == "0/1"  # no direction: not matched


def _eval(ckpt, config, env, out, scorer_file, *extra):
    mot(["eval", "--ckpt", str(ckpt), "--config", str(config), "--out", str(out), "--n", "4", "--n_heldout", "2",
         "--n_speech", "2", "--max_text_tokens", "8", "--max_speech_units", "6", "--steps", "4",
         "--scorer_file", str(scorer_file), *extra, *TINY_MODEL, *data_args(env)])
    return json.loads((out / "metrics.json").read_text())


@pytest.mark.slow
def test_mot_eval_writes_json_and_grid_and_a_seed_fixes_them(speech_runs, demo_env, scorer_file, tmp_path):
    ckpt = run_dir(speech_runs / "speech" / "mot") / "checkpoints" / "last.ckpt"
    config = CONFIGS / "speech/mot.yaml"
    report = _eval(ckpt, config, demo_env, tmp_path / "a", scorer_file)
    assert report["global_step"] == 2 and report["world"] == "procedural"  # the one demo world, in the fixed mode
    assert report["sampling"]["seed"] == 0 and report["sampling"]["temperature"] == 1.0
    assert report["metrics"]["faithfulness_all"]["n"] == 4 and report["metrics"]["wer"]["n"] == 2
    assert report["bounds"]["fid_floor"] >= 0 and 0 <= report["bounds"]["seen_faithfulness_all_ceiling"] <= 1
    assert any("speech recogniser" in n for n in report["notes"])
    with Image.open(tmp_path / "a" / "samples.png") as grid:
        assert grid.width >= 4 * 128 and grid.height >= 128  # 6 generated pictures with their verdicts
    again = _eval(ckpt, config, demo_env, tmp_path / "b", scorer_file)
    other = _eval(ckpt, config, demo_env, tmp_path / "c", scorer_file, "--seed", "1")
    assert again["metrics"] == report["metrics"]
    assert other["metrics"] != report["metrics"] and other["sampling"]["seed"] == 1


@pytest.mark.slow
def test_diffusion_latents_are_scored_too(transfusion_env, scorer_file, tmp_path):
    run_fit(["--config", str(CONFIGS / "transfusion/mot.yaml"), *TRANSFUSION, "--trainer.max_steps", "1",
             "--trainer.limit_val_batches", "0", "--data.loader.train_batches_per_epoch", "1"],
            transfusion_env, tmp_path / "runs")
    ckpt = run_dir(tmp_path / "runs" / "transfusion" / "mot") / "checkpoints" / "last.ckpt"
    report = _eval(ckpt, CONFIGS / "transfusion/mot.yaml", transfusion_env, tmp_path / "eval", scorer_file,
                   *TRANSFUSION)
    assert report["sampling"]["steps"] == 4 and report["sampling"]["guidance"] == 3.0
    assert {"faithfulness_all", "fid", "kid", "caption_all", "bleu"} <= set(report["metrics"])
    assert "wer" not in report["metrics"]  # no speech in this setting


@pytest.mark.slow
def test_mot_eval_scores_the_named_world_with_a_given_scorer_and_refuses_one_of_another_size(speech_runs, demo_env,
                                                                                            tmp_path):
    ckpt = run_dir(speech_runs / "speech" / "mot") / "checkpoints" / "last.ckpt"
    tiny = ScorerConfig(channels=(4, 4, 4), features=8, pool=32, steps=2, batch_size=8)
    for side in (32, 64):  # tiny fits: this checks the wiring, not the accuracy
        save_scorer(fit_scorer(get_world("procedural"), side, tiny), tmp_path / f"scorer-{side}.pt")
    report = _eval(ckpt, CONFIGS / "speech/mot.yaml", demo_env, tmp_path / "p", tmp_path / "scorer-32.pt", "--world",
                   "procedural")
    assert report["world"] == "procedural"
    assert report["metrics"]["faithfulness_all"]["n"] == 4 and report["metrics"]["heldout/faithfulness_all"]["n"] == 2
    assert {"fid", "kid", "caption_all", "bleu"} <= set(report["metrics"])
    with pytest.raises(ValueError, match="at 64 px, but the prompts are of the procedural world at 32 px"):
        _eval(ckpt, CONFIGS / "speech/mot.yaml", demo_env, tmp_path / "q", tmp_path / "scorer-64.pt")
    with pytest.raises(ValueError, match="unknown demo world 'fixed'"):  # the retired world is no world
        _eval(ckpt, CONFIGS / "speech/mot.yaml", demo_env, tmp_path / "r", tmp_path / "scorer-32.pt", "--world",
              "fixed")
