"""Checkpoints that travel: a 2-process FSDP2 CPU run -> `mot checkpoint consolidate` -> `mot export` ->
`mot generate --export` (no training config), and the plain-PyTorch snippet of the export's README gives
the module's logits."""
from __future__ import annotations

import json
import pickle
import re
import runpy
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from PIL import Image

from mot_lightning.building import build
from mot_lightning.checkpoints import UnsafeCheckpointError, checkpoint_hparams, load_checkpoint
from mot_lightning.checkpoints.export import SNIPPET
from mot_lightning.commands.main import main as mot
from tests.app.conftest import CONFIGS, ROOT, TINY_MODEL, data_args, run_fit
from tests.app.test_checkpoints import SideEffect
from tests.numerics import assert_close, transformer_reduction

SPEECH = str(CONFIGS / "speech/mot.yaml")


@pytest.fixture(scope="module")
def sharded(fsdp2_runs) -> Path:
    """last.ckpt (step 2) of a real 2-process FSDP2 run on CPU (gloo): a torch.distributed.checkpoint directory.
    The run is the shared one of ``distributed_runs`` (activation checkpointing, an EMA, samples and generation
    metrics; also checked by test_training, test_samples_distributed and test_gen_metrics_distributed)."""
    assert fsdp2_runs.first
    last = fsdp2_runs.step2
    assert last.is_dir() and (last / ".metadata").is_file()
    return last


@pytest.fixture(scope="module")
def exported(sharded, demo_env, tmp_path_factory) -> tuple[Path, Path]:
    """(consolidated checkpoint file, export folder) of the FSDP2 run."""
    root = tmp_path_factory.mktemp("export")
    consolidated = root / "model.ckpt"
    mot(["checkpoint", "consolidate", str(sharded), "--out", str(consolidated)])
    mot(["export", "--ckpt", str(consolidated), "--config", SPEECH, "--out", str(root / "export"), *TINY_MODEL,
         *data_args(demo_env)])
    return consolidated, root / "export"


@pytest.mark.slow
@pytest.mark.multiprocess
def test_consolidated_checkpoint_is_the_full_model(sharded, exported, demo_env):
    consolidated, _ = exported
    checkpoint = load_checkpoint(consolidated)
    assert checkpoint["global_step"] == 2 and "optimizer_states" not in checkpoint
    model, _ = build([SPEECH], [*TINY_MODEL, *data_args(demo_env)])
    own = model.state_dict()
    assert {k: tuple(v.shape) for k, v in checkpoint["state_dict"].items()} == \
        {k: tuple(v.shape) for k, v in own.items()}  # every tensor whole, none missing
    # the same tensors as torch.distributed.checkpoint's own load into a full-size (unsharded) state_dict
    reference = {"state_dict": {k: torch.empty_like(v) for k, v in own.items()}}
    dcp.load(reference, checkpoint_id=str(sharded), no_dist=True)
    for key, value in reference["state_dict"].items():
        assert torch.equal(checkpoint["state_dict"][key], value), key  # the same bytes read: bitwise
    model.load_state_dict(checkpoint["state_dict"])  # strict
    assert checkpoint_hparams(sharded)["backbone"]["sparsity"] == "mot"  # meta.pt read weights-only


@pytest.mark.slow
@pytest.mark.multiprocess
def test_export_folder_generates_without_the_training_config(exported, tmp_path):
    _, folder = exported
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md", "config.yaml", "export.json", "model.safetensors", "model.yaml", "tokenizers"]
    assert sorted(p.name for p in (folder / "tokenizers").iterdir()) == ["image.pt", "speech.pt"]
    assert json.loads((folder / "export.json").read_text())["global_step"] == 2
    out = tmp_path / "samples"
    # no --config and no tokenizer dir: everything comes from the folder (the demo data only for image_to_caption)
    mot(["generate", "--export", str(folder), "--out", str(out), "--prompt", "one blue square", "--n", "1",
         "--max_text_tokens", "4", "--max_speech_units", "4"])
    with Image.open(out / "caption_to_image_00.png") as img:
        assert img.size == (32, 32)
    assert (out / "text_to_speech_00.wav").stat().st_size > 44
    assert "reference" in (out / "image_to_caption.txt").read_text()
    mot(["generate", "--ckpt", str(folder), "--out", str(tmp_path / "again"), "--prompt", "one blue square",
         "--task", "caption_to_image"])  # --ckpt takes an export folder too, with the same result
    assert (tmp_path / "again" / "caption_to_image_00.png").read_bytes() == \
        (out / "caption_to_image_00.png").read_bytes()


@pytest.mark.slow
@pytest.mark.multiprocess
def test_plain_pytorch_snippet_gives_the_modules_logits(exported, demo_env, tmp_path):
    consolidated, folder = exported
    readme = (folder / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", readme, re.DOTALL).group(1)
    assert code == SNIPPET.format(export_dir=folder.resolve())
    (tmp_path / "snippet.py").write_text(code)
    net = runpy.run_path(str(tmp_path / "snippet.py"))["net"]  # the README's code, as a user would run it
    model, dm = build([SPEECH], [*TINY_MODEL, *data_args(demo_env)])
    model.load_state_dict(load_checkpoint(consolidated)["state_dict"])
    model.eval()
    batch = next(iter(dm.val_dataloader()[0]))
    with torch.no_grad():
        expected = model.net(batch.tokens, batch.modality, positions=batch.positions, doc_ids=batch.doc_ids)
        actual = net(batch.tokens, batch.modality, positions=batch.positions, doc_ids=batch.doc_ids)
    cfg = model.cfg
    assert_close(actual, expected, reduction=transformer_reduction(cfg.n_layers, cfg.dim, cfg.ffn_hidden,
                                                                    batch.seq_len))


def test_docs_show_the_export_snippet():
    assert SNIPPET.format(export_dir="export/") in (ROOT / "docs/checkpoints.md").read_text()


@pytest.mark.slow
@pytest.mark.multiprocess
def test_sharded_checkpoints_are_checked_before_loading(sharded, demo_env, tmp_path):
    with pytest.raises(FileNotFoundError, match="mot checkpoint consolidate"):
        mot(["generate", "--ckpt", str(sharded), "--config", SPEECH, "--out", str(tmp_path)])
    with pytest.raises(ValueError, match="backbone.sparsity: checkpoint 'mot', config 'dense'"):
        run_fit(["--config", str(CONFIGS / "speech/dense.yaml"), "--ckpt_path", str(sharded)], demo_env, tmp_path)


def test_a_sharded_checkpoint_whose_metadata_would_run_code_is_refused(tmp_path):
    """torch.distributed.checkpoint unpickles `.metadata` without restriction: the app reads it first with an
    unpickler that accepts DCP's metadata types only."""
    fake, marker = tmp_path / "last.ckpt", tmp_path / "marker.txt"
    fake.mkdir()
    (fake / ".metadata").write_bytes(pickle.dumps({"state_dict_metadata": SideEffect(marker)}))
    with pytest.raises(UnsafeCheckpointError, match="touch"):
        checkpoint_hparams(fake)
    with pytest.raises(UnsafeCheckpointError, match="touch"):
        mot(["checkpoint", "consolidate", str(fake), "--out", str(tmp_path / "out.ckpt")])
    assert not marker.exists() and not (tmp_path / "out.ckpt").exists()
