"""Run identity (one dir per experiment, resumes merged, validate kept apart), the schedule following
trainer.max_steps, and the HParams tab: through the real CLI."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from tensorboard.plugins.hparams import plugin_data_pb2

from mot_lightning.compare.runs import RunError, load_run
from mot_lightning.data.datamodule import MultiModalDataModule
from mot_lightning.lit_cli import TRAINER_DEFAULTS, MotCLI
from mot_lightning.lit_module import MultiModalLM
from mot_lightning.run_identity import name_from_config, read_identity
from tests.app.conftest import CONFIGS, TINY, TINY_MODEL, run_dir, run_fit

MOT = str(CONFIGS / "speech/mot.yaml")
QUICK = ["--trainer.limit_val_batches", "1", "--trainer.log_every_n_steps", "1", "--trainer.val_check_interval", "2"]


def place(args: list[str], save_dir: Path) -> MotCLI:
    """Parse and instantiate like `mot fit` (nothing runs): where would this run go?"""
    return MotCLI(MultiModalLM, MultiModalDataModule, args=[*args, *TINY, "--trainer.logger.init_args.save_dir",
                                                            str(save_dir)],
                  run=False, trainer_defaults=TRAINER_DEFAULTS, auto_configure_optimizers=False)


def test_different_experiments_get_different_dirs_and_seeds_share_the_hash(tmp_path):
    plain = place(["--config", MOT], tmp_path).run
    dirs = {
        "plain": plain.run_dir,
        "dense": place(["--config", MOT, "--model.backbone.sparsity", "dense"], tmp_path).run.run_dir,
        "size overlay": place(["--config", MOT, "--config", str(CONFIGS / "model/tiny.yaml")], tmp_path).run.run_dir,
        "lr": place(["--config", MOT, "--model.optimizer.init_args.lr", "0.001"], tmp_path).run.run_dir,
        "longer": place(["--config", MOT, "--trainer.max_steps", "900"], tmp_path).run.run_dir,  # schedule follows
    }
    assert len(set(dirs.values())) == len(dirs), dirs
    assert all(d.parent == tmp_path / "speech" / "mot" for d in dirs.values())
    assert plain.run_dir.name == f"s0-{plain.identity.hash}" and len(plain.identity.hash) == 8
    # Logging, validation and checkpoint settings do not make another experiment ...
    same = place(["--config", MOT, *QUICK, "--checkpoint.every_n_train_steps", "7"], tmp_path).run
    assert same.run_dir == plain.run_dir
    # ... and seeds of one experiment share the hash suffix.
    seed1 = place(["--config", MOT, "--seed_everything", "1", "--data.seed", "1"], tmp_path).run
    assert seed1.run_dir.name == f"s1-{plain.identity.hash}"
    assert (place(["--config", MOT, "--seed_everything", "1"], tmp_path).run.run_dir.name
            == f"s1d0-{plain.identity.hash}")
    named = place(["--config", MOT, "--trainer.logger.init_args.name", "exp/a", "--run_id", "first"], tmp_path).run
    assert named.run_dir == tmp_path / "exp" / "a" / "first"


def test_config_files_anywhere_give_relative_run_names(tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(MOT, work / "my_exp.yaml")
    monkeypatch.chdir(work)
    cli = place(["--config", "my_exp.yaml"], Path("runs"))
    assert cli.run.run_dir.parent == Path("runs") / "my_exp"
    assert cli.config.checkpoint.dirpath == str(cli.run.run_dir / "checkpoints")
    assert name_from_config("/my_exp.yaml") == "my_exp"  # a config at the filesystem root: never "/my_exp"
    assert name_from_config(tmp_path / "elsewhere" / "b.yaml", cwd=work) == "elsewhere/b"
    assert name_from_config("sub/dir/c.yml", cwd=work) == "sub/dir/c"
    assert name_from_config("/x/configs/chameleon/mot.yaml") == "chameleon/mot"


def test_schedule_length_follows_trainer_max_steps_unless_set(tmp_path):
    def schedule(*args):
        cli = place(["--config", MOT, *TINY_MODEL, *args], tmp_path)
        cli.model.configure_model()
        return cli.model.configure_optimizers()["lr_scheduler"]["scheduler"]

    short, long = schedule("--trainer.max_steps", "50"), schedule("--trainer.max_steps", "500")
    assert (short.max_steps, long.max_steps) == (50, 500)
    assert short.factor(50) == pytest.approx(0.1) and long.factor(50) > 0.9  # min_lr_ratio 0.1 reached at the end
    assert schedule("--trainer.max_steps", "50", "--model.scheduler.init_args.max_steps", "80").max_steps == 80
    with pytest.raises(ValueError, match="follows trainer.max_steps, which is not set"):
        schedule("--trainer.max_steps", "-1")


def _hparams_metrics(version: Path) -> set[str]:
    """Metric tags the HParams plugin declares in the version's event files."""
    tags = set()
    for events in version.glob("events.out.tfevents.*"):
        for event in EventFileLoader(str(events)).Load():
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name == "hparams":
                    data = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
                    if data.HasField("experiment"):
                        tags |= {m.name.tag for m in data.experiment.metric_infos}
                        assert any(h.name == "model.backbone.sparsity" for h in data.experiment.hparam_infos)
    return tags


@pytest.mark.slow
def test_resume_merges_other_experiments_are_refused_and_validate_stays_apart(demo_env, tmp_path):
    common = ["--config", MOT, *QUICK, "--model.scheduler.init_args.max_steps", "4"]
    run_fit([*common, "--trainer.max_steps", "2"], demo_env, tmp_path)
    run_fit([*common, "--trainer.max_steps", "4", "--ckpt_path", "last"], demo_env, tmp_path)
    run = run_dir(tmp_path / "speech" / "mot")
    record = json.loads((run / "run.json").read_text())
    assert [(x["version"], x["resumed"]) for x in record["launches"]] == [("version_0", False), ("version_1", True)]
    assert record["seed"] == 0 and record["configs"] == [MOT] and record["experiment"]["model"]["backbone"]["dim"] == 32
    merged = load_run(run)  # the versions' config.yaml agree with run.json
    assert [v.name for v in merged.versions] == ["version_0", "version_1"]
    assert list(merged.scalars["train/loss"].steps) == [0, 1, 2, 3]
    assert "final/val/loss" in _hparams_metrics(run / "version_1")

    run_fit([*common, "--trainer.max_steps", "4", "--ckpt_path", "last"], demo_env, tmp_path, command="validate")
    assert (run / "validate" / "version_0").is_dir() and not (run / "version_2").exists()
    assert read_identity(run).launches[-1]["version"] == "validate/version_0"
    assert [v.name for v in load_run(run).versions] == ["version_0", "version_1"]

    # Another experiment never lands in this dir: with --run_id it is refused ...
    with pytest.raises(ValueError, match="holds another experiment.*model.backbone.sparsity: mot -> dense"):
        run_fit([*common, "--trainer.max_steps", "2", "--model.backbone.sparsity", "dense", "--run_id", run.name],
                demo_env, tmp_path)
    # ... and its logs copied in by hand are not merged by mot compare.
    run_fit([*common, "--trainer.max_steps", "2", "--model.backbone.sparsity", "dense"], demo_env, tmp_path / "d")
    shutil.copytree(run_dir(tmp_path / "d" / "speech" / "mot") / "version_0", run / "version_7")
    with pytest.raises(RunError, match="version_7 belong to another experiment.*sparsity: mot -> dense"):
        load_run(run)
