"""The diagnostics tags reach TensorBoard in a real `mot fit` (Transfusion MoT: per-tower health, attention
shares and heatmaps, QK-logit scale, diffusion loss by noise level per validation set)."""
from __future__ import annotations

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.app.conftest import CONFIGS, TRANSFUSION, run_dir, run_fit

DIAGNOSTICS = ["--trainer.callbacks+=mot_lightning.callbacks.TowerHealth", "--trainer.callbacks.every_n_steps", "1",
               "--trainer.callbacks+=mot_lightning.callbacks.AttentionMaps", "--trainer.callbacks.rows", "2",
               "--trainer.callbacks+=mot_lightning.callbacks.LossByNoiseLevel", "--trainer.callbacks.n_bins", "2"]


@pytest.mark.slow
def test_diagnostics_tags_reach_tensorboard(transfusion_env, tmp_path):
    run_fit(["--config", str(CONFIGS / "transfusion/mot.yaml"), *TRANSFUSION, *DIAGNOSTICS,
             "--trainer.max_steps", "2", "--trainer.val_check_interval", "2", "--trainer.limit_val_batches", "2",
             "--trainer.log_every_n_steps", "1", "--data.loader.train_batches_per_epoch", "2"],
            transfusion_env, tmp_path)
    acc = EventAccumulator(str(max(run_dir(tmp_path / "transfusion" / "mot").glob("version_*"))),
                           size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    scalars, images = set(acc.Tags()["scalars"]), set(acc.Tags()["images"])
    for tag in ("diag/grad_norm/text/attn", "diag/grad_norm/image/ffn", "diag/weight_norm/shared/latent",
                "diag/update_ratio/image/norm", "diag/tokens/image", "diag/qk_logit_max/text",
                "diag/qk_logit_max/image", "diag/attn/image_to_text/layer0", "diag/attn/text_to_image/layer1",
                "diag/attn_mass/image_to_image/layer1", "val/val_seen/loss_image_t0", "val/val_heldout/loss_image_t1",
                "val/loss_image_t1"):
        assert tag in scalars, (tag, sorted(t for t in scalars if t.startswith(("diag", "val/"))))
    assert {"diag/attn_map/layer0", "diag/attn_map/layer1"} <= images
    steps = {tag: [e.step for e in acc.Scalars(tag)] for tag in ("diag/grad_norm/text/attn", "train/grad_norm",
                                                                "diag/attn/image_to_text/layer0", "val/loss")}
    assert steps["diag/grad_norm/text/attn"] == steps["train/grad_norm"] == [0, 1]  # one step axis
    assert steps["diag/attn/image_to_text/layer0"] == steps["val/loss"]
    grads = [acc.Scalars(t)[-1].value ** 2 for t in scalars if t.startswith("diag/grad_norm/")]
    assert sum(grads) ** 0.5 == pytest.approx(acc.Scalars("train/grad_norm")[-1].value, rel=1e-4)
