"""Train with the app, evaluate anywhere, start again: a text-only `mot fit` run exported by `mot export --format hf`
loads in ``transformers`` with the app's logits, imports as the text tower of a text+image MoT with the same
text logits at step 0, and trains on through the LMFusion-from-HF recipe (tiny sizes, real runs)."""
from __future__ import annotations

import pytest
import torch

from mot_lightning.checkpoints import load_checkpoint
from mot_lightning.checkpoints.hf_folder import HFFolder
from mot_lightning.commands.export import main as export_main
from mot_lightning.model import TransformerConfig
from mot_lightning.model.lm import TokenLM
from mot_lightning.training.warm_start import WarmStart, warm_start
from tests.app.conftest import CONFIGS, TINY_MODEL, data_args, run_dir, run_fit
from tests.numerics import assert_close, transformer_reduction

pytest.importorskip("transformers")
RECIPES = CONFIGS / "recipes"
BASE_ARGS = ["--trainer.limit_val_batches", "0", "--data.loader.train_batches_per_epoch", "4"]


def _app_model(ckpt) -> TokenLM:
    from mot_lightning.checkpoints.model_config import plain_config

    checkpoint = load_checkpoint(ckpt)
    backbone = plain_config(checkpoint["hyper_parameters"])["backbone"]
    cfg = TransformerConfig(**backbone.get("init_args", backbone))
    net = TokenLM(cfg, checkpoint["hyper_parameters"]["vocab_size"])
    net.load_state_dict({k[4:]: v for k, v in checkpoint["state_dict"].items() if k.startswith("net.")})
    return net.eval()


@pytest.fixture(scope="module")
def exported(demo_env, tmp_path_factory):
    """A 2-step text-only `mot fit` run (tiny) and its `mot export --format hf` folder: (checkpoint, folder)."""
    tmp = tmp_path_factory.mktemp("hf_roundtrip")
    run_fit(["--config", str(RECIPES / "text_only.yaml"), "--trainer.max_steps", "2", *BASE_ARGS], demo_env, tmp / "a")
    ckpt = run_dir(tmp / "a" / "recipes" / "text_only") / "checkpoints" / "last.ckpt"
    out = tmp / "hf"
    export_main(["--format", "hf", "--ckpt", str(ckpt), "--config", str(RECIPES / "text_only.yaml"), "--out", str(out),
                 *TINY_MODEL, *data_args(demo_env)])
    return ckpt, out


@pytest.mark.slow
def test_train_export_load_in_transformers_import_as_text_tower_and_train_on(exported, demo_env, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ckpt, out = exported

    app, hf = _app_model(ckpt), AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ids = AutoTokenizer.from_pretrained(out)("<|BOS|>the red square is above", add_special_tokens=False,
                                             return_tensors="pt").input_ids
    assert ids[0, 0] == 257 and ids[0, 1] == ord("t")  # the app's BOS at its joint id, then UTF-8 bytes
    cfg, T = app.backbone.cfg, ids.shape[1]
    reduction = transformer_reduction(cfg.n_layers, cfg.dim, cfg.ffn_hidden, T)
    with torch.no_grad():
        ours, theirs = app(ids, torch.zeros_like(ids)), hf(ids).logits
    assert theirs.shape[-1] == 256 + 7  # text bytes + the app's boundary tokens
    assert_close(theirs, ours, reduction=reduction)

    # the export as the text tower of a text+image MoT, the image tower a copy: same text logits at step 0
    mot = TokenLM(HFFolder(out).cfg.replace(sparsity="mot", n_modalities=2), 256 + 7 + 512)
    warm_start(mot, WarmStart(str(out), new_rows="mean_zero_head"), {"text": 256, "special": 7, "image": 512})
    with torch.no_grad():
        assert_close(mot.eval()(ids, torch.zeros_like(ids))[..., :263], theirs, reduction=reduction)

    # and train on: the LMFusion-from-HF recipe, text tower frozen at the exported weights, image tower trains
    hf_args = ["--model.init_from.checkpoint", str(out), "--data.text_tokenizer.init_args.path", str(out)]
    run_fit(["--config", str(RECIPES / "lmfusion_hf.yaml"), *hf_args, "--trainer.max_steps", "3",
             "--trainer.callbacks", "[]", *BASE_ARGS], demo_env, tmp_path / "b")
    fused = load_checkpoint(run_dir(tmp_path / "b" / "recipes" / "lmfusion_hf") / "checkpoints" / "last.ckpt")
    assert fused["hyper_parameters"]["vocab_layout"] == {"text": 256, "special": 7, "image": 512, "speech": 0}
    state, exported = fused["state_dict"], app.state_dict()
    text_tower = [k for k in exported if k.startswith("backbone.") and k.endswith(".weights.0")]
    assert text_tower and all(torch.equal(state["net." + k], exported[k]) for k in text_tower)  # frozen
    moved = [k for k in text_tower if not torch.equal(state["net." + k.replace(".weights.0", ".weights.1")],
                                                      exported[k])]
    assert len(moved) >= len(text_tower) // 2  # the image tower started as the copy, then trained


@pytest.mark.slow
def test_bagel_two_stage_recipe_from_an_exported_folder(exported, demo_env, tmp_path):
    """Stage 1: the dense model is the LLM, new rows at the mean (embedding) and zero (head); stage 2: that
    model untied into a text+image MoT whose towers start as its copies."""
    _, out = exported
    hf_args = ["--data.text_tokenizer.init_args.path", str(out), "--trainer.max_steps", "2",
               "--trainer.callbacks", "[]", *BASE_ARGS]
    run_fit(["--config", str(RECIPES / "bagel_hf_stage1.yaml"), "--model.init_from.checkpoint", str(out), *hf_args],
            demo_env, tmp_path / "s1")
    stage1_path = run_dir(tmp_path / "s1" / "recipes" / "bagel_hf_stage1") / "checkpoints" / "last.ckpt"
    stage1 = load_checkpoint(stage1_path)["state_dict"]
    image = slice(263, 263 + 512)  # after the text bytes and the boundary tokens
    # two warmup steps of AdamW move a weight by ~1e-4: far below the 0.02 of a fresh init
    assert stage1["net.head.weight"][image].abs().max() < 1e-3  # zero-initialised head rows
    assert stage1["net.embed.weight"][image].std(0).max() < 1e-3  # every new row started at the same mean
    run_fit(["--config", str(RECIPES / "bagel_hf_stage2.yaml"), "--model.init_from.checkpoint", str(stage1_path),
             *hf_args], demo_env, tmp_path / "s2")
    stage2 = load_checkpoint(run_dir(tmp_path / "s2" / "recipes" / "bagel_hf_stage2") / "checkpoints" / "last.ckpt")
    state = stage2["state_dict"]
    dense = [k for k in stage1 if k.startswith("net.backbone.") and k.endswith(".weights.0")]
    for k in dense:  # both towers started as the stage-1 weight and moved by two small steps
        for tower in (k, k.replace(".weights.0", ".weights.1")):
            assert (state[tower] - stage1[k]).abs().max() < 1e-3, tower
