"""The unimodal baselines (configs/unimodal/): each trains on its modality's documents and logs its validation
loss under the joint runs' tags, on their validation sets, so `mot compare` puts it beside them."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest

from mot_lightning.commands.compare import main as compare_main
from mot_lightning.compare.runs import load_run
from tests.app.conftest import CONFIGS, run_dir, run_fit
from tests.conftest import SPEECH_RUN

MODALITY = {"text_only": "text", "image_only": "image", "speech_only": "speech"}


@pytest.fixture(scope="module")
def unimodal_runs(demo_env, tmp_path_factory) -> Path:
    """The three baselines on the speech setting's dense config, trained as the joint ``speech_runs`` are."""
    root = tmp_path_factory.mktemp("unimodal")
    for name in MODALITY:
        run_fit(["--config", str(CONFIGS / "speech/dense.yaml"), "--config", str(CONFIGS / f"unimodal/{name}.yaml"),
                 *SPEECH_RUN, "--trainer.log_every_n_steps", "1", "--trainer.logger.init_args.name",
                 f"unimodal/{name}"], demo_env, root)
    return root


@pytest.mark.slow
def test_unimodal_baselines_log_their_modality_on_the_joint_runs_tags(unimodal_runs, speech_runs, tmp_path):
    joint = load_run(run_dir(speech_runs / "speech" / "dense"))
    joint_val = {t for t in joint.loss_tags if t.startswith("val/")}
    sets = {t.split("/")[1] for t in joint_val if t.count("/") == 2}
    assert sets == {"val_seen", "val_heldout"}
    assert {"val/val_seen/loss_text", "val/val_heldout/loss_image"} <= joint_val
    for name, modality in MODALITY.items():
        run = load_run(run_dir(unimodal_runs / "unimodal" / name))
        val = {t for t in run.loss_tags if t.startswith("val/")}
        # its own modality alone (context modalities are never predicted), on every validation set of the joint run
        assert val == {"val/loss", f"val/loss_{modality}"} | {f"val/{s}/loss_{modality}" for s in sets}
        assert {t for t in run.loss_tags if t.startswith("train/loss_")} == {f"train/loss_{modality}"}
        if modality != "speech":  # the joint runs' one validation batch holds no speech document
            assert val <= joint_val
    image = load_run(run_dir(unimodal_runs / "unimodal" / "image_only"))
    sources = {t.split("/")[1] for t in image.scalars if t.startswith("train/") and t.count("/") == 2}
    assert sources and sources <= {"image_caption", "interleaved"}  # the sources without images are left out
    compare_main([str(unimodal_runs / "unimodal" / "image_only"), "--baseline", str(speech_runs / "speech" / "dense"),
                  "--out", str(tmp_path / "c"), "--no-plots"])
    rows = {r["key"]: r for r in csv.DictReader((tmp_path / "c" / "table.csv").open())}
    assert rows["val/val_seen/loss_image"]["ratio"] != "" and rows["val/val_heldout/loss_image"]["ratio"] != ""
    assert "never logged val/val_seen/loss_text" in rows["val/val_seen/loss_text"]["note"]
