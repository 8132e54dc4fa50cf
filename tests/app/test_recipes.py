"""configs/recipes: every file parses, and the LMFusion recipe runs end to end through `mot fit` (text-only
base run -> warm-started, frozen text tower + trained image tower), tiny sizes."""
from __future__ import annotations

import pytest
import torch
import yaml

from mot_lightning.checkpoints import load_checkpoint
from mot_lightning.commands.fit import cli_main
from tests.app.conftest import CONFIGS, run_dir, run_fit

RECIPES = CONFIGS / "recipes"
SETTINGS = ["text_only.yaml", "lmfusion.yaml", "lmfusion_scratch.yaml", "lmfusion_hf.yaml", "bagel_hf_stage1.yaml",
            "bagel_hf_stage2.yaml"]  # complete configs
FRAGMENTS = ["dense_to_mot.yaml", "tower_lr.yaml", "ema.yaml", "data_mix.yaml"]  # on top of configs/speech/mot.yaml


def test_every_recipe_is_listed_here():
    assert sorted(p.name for p in RECIPES.glob("*.yaml")) == sorted(SETTINGS + FRAGMENTS)


@pytest.mark.parametrize("name", SETTINGS + FRAGMENTS)
def test_print_config(name, capsys):
    args = ["--config", str(RECIPES / name)]
    if name in FRAGMENTS:
        args = ["--config", str(CONFIGS / "speech/mot.yaml"), *args]
    with pytest.raises(SystemExit) as exit_:
        cli_main(["fit", *args, "--print_config"])
    assert exit_.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["backbone"]["dim"] > 0


def test_the_scratch_twin_differs_only_in_warm_start_and_freezing():
    lmfusion = yaml.safe_load((RECIPES / "lmfusion.yaml").read_text())
    scratch = yaml.safe_load((RECIPES / "lmfusion_scratch.yaml").read_text())
    assert lmfusion["model"].pop("init_from") and lmfusion["model"].pop("freeze")
    assert lmfusion == scratch


@pytest.mark.slow
def test_lmfusion_recipe_warm_starts_a_frozen_text_tower_and_trains_the_image_tower(demo_env, tmp_path):
    base_args = ["--trainer.limit_val_batches", "0", "--data.loader.train_batches_per_epoch", "4"]
    run_fit(["--config", str(RECIPES / "text_only.yaml"), "--trainer.max_steps", "2", *base_args],
            demo_env, tmp_path / "a")
    base = run_dir(tmp_path / "a" / "recipes" / "text_only") / "checkpoints" / "last.ckpt"
    run_fit(["--config", str(RECIPES / "lmfusion.yaml"), "--model.init_from.checkpoint", str(base),
             "--trainer.max_steps", "3", "--trainer.callbacks", "[]", *base_args], demo_env, tmp_path / "b")
    fused = run_dir(tmp_path / "b" / "recipes" / "lmfusion") / "checkpoints" / "last.ckpt"
    src, out = load_checkpoint(base), load_checkpoint(fused)
    layout = out["hyper_parameters"]["vocab_layout"]  # recorded from the data link
    assert src["hyper_parameters"]["vocab_layout"] == {**layout, "image": 0}
    assert layout["image"] == 512 and src["hyper_parameters"]["backbone"]["n_modalities"] == 1
    s, o = src["state_dict"], out["state_dict"]
    text_tower = [k for k in o if k.startswith("net.backbone.") and k.endswith(".weights.0")]
    assert text_tower and all(torch.equal(o[k], s[k]) for k in text_tower)  # dense weights, then frozen
    image_tower = [k.replace(".weights.0", ".weights.1") for k in text_tower]
    moved = [k for k in image_tower if not torch.equal(o[k], s[k.replace(".weights.1", ".weights.0")])]
    assert len(moved) >= len(image_tower) // 2  # started as the text model's copy, then trained
    n_text = layout["text"]  # text rows frozen; the special tokens' and image rows train
    for name in ("net.embed.weight", "net.head.weight"):
        assert torch.equal(o[name][:n_text], s[name][:n_text]), name
    special = slice(n_text, n_text + layout["special"])  # special_rows: false in the recipe
    assert not torch.equal(o["net.head.weight"][special], s["net.head.weight"][special])
