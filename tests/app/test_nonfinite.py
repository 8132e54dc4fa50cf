"""Non-finite losses (``callbacks/nonfinite.py``): an ``lr: 1.0e6`` run stops naming the step and
keeps a finite ``last.ckpt``; a batch of corrupt latents stops or is skipped (no update, counted); a
checkpoint of non-finite weights is refused; a loss far above chance warns; validation logs NaN as NaN."""
from __future__ import annotations

import math
import re
from functools import partial
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader

from mot_lightning.callbacks import NonFiniteGuard, NonFiniteLossError
from mot_lightning.lit_module import MultiModalLM
from mot_lightning.model import TransformerConfig
from mot_lightning.objectives import Transfusion
from tests.app.conftest import CONFIGS, run_dir, run_fit
from tests.app.fixed_batches import logged
from tests.objectives.batches import LAT, V, latent_batch, token_batch

BAD_STEP = 2


def transfusion_module(lr: float = 1e-3) -> MultiModalLM:
    torch.manual_seed(0)
    cfg = TransformerConfig(dim=32, n_layers=2, n_heads=4, n_modalities=2, sparsity="mot")
    return MultiModalLM(backbone=cfg, vocab_size=V, objective=Transfusion(), latent_dim=LAT,
                        optimizer=partial(torch.optim.AdamW, lr=lr))


def corrupt_at(step: int, n: int = 5) -> DataLoader:
    """Latent batches, the one of optimizer step ``step`` with a NaN image latent (a corrupt input)."""
    batches = [latent_batch(seed=s) for s in range(n)]
    batches[step].latents[0, 4, 0] = float("nan")
    return DataLoader(batches, batch_size=None)


def trainer(tmp_path: Path, guard: NonFiniteGuard, steps: int = 5, **kw) -> pl.Trainer:
    return pl.Trainer(accelerator="cpu", max_steps=steps, callbacks=[guard, *kw.pop("callbacks", [])],
                      logger=CSVLogger(tmp_path), log_every_n_steps=1, enable_progress_bar=False,
                      enable_model_summary=False, limit_val_batches=0, **kw)


def finite(state: dict) -> bool:
    return all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_stop_names_the_step_and_modality_and_keeps_the_last_checkpoint(tmp_path):
    model = transfusion_module()
    ckpt = ModelCheckpoint(tmp_path / "ckpt", every_n_train_steps=1, save_last=True)
    t = trainer(tmp_path, NonFiniteGuard(), callbacks=[ckpt])
    message = f"optimizer step {BAD_STEP}: non-finite training loss of.*image"
    with pytest.raises(NonFiniteLossError, match=message):
        t.fit(model, corrupt_at(BAD_STEP))
    last = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)
    assert last["global_step"] == BAD_STEP and finite(last["state_dict"])
    for name, value in model.state_dict().items():  # the bad step changed nothing after that save
        torch.testing.assert_close(last["state_dict"][name], value, rtol=0, atol=0, msg=name)


def test_skip_drops_the_update_counts_it_and_trains_on(tmp_path):
    model = transfusion_module()
    t = trainer(tmp_path, NonFiniteGuard(mode="skip", max_skipped=1))
    with pytest.warns(UserWarning, match=f"optimizer step {BAD_STEP}.*step skipped"):
        t.fit(model, corrupt_at(BAD_STEP))
    assert t.global_step == 5 and finite(model.state_dict())
    optimizer = t.optimizers[0]
    steps = {float(optimizer.state[p]["step"]) for group in optimizer.param_groups for p in group["params"]}
    assert steps == {4.0}  # 5 optimizer steps, one of them left every weight and its state untouched
    counter = logged(Path(t.logger.log_dir) / "metrics.csv")["train/skipped_nonfinite_steps"]
    assert counter == {0: 0.0, 1: 0.0, 2: 1.0, 3: 1.0, 4: 1.0}


def test_skip_stops_past_its_limit(tmp_path):
    t = trainer(tmp_path, NonFiniteGuard(mode="skip", max_skipped=0))
    with pytest.raises(NonFiniteLossError, match=r"more than nonfinite.max_skipped: 0"):
        t.fit(transfusion_module(), corrupt_at(1))


class PoisonWeights(pl.Callback):
    """Writes a NaN into one weight after the given optimizer step (a fault a checkpoint must not keep)."""

    def __init__(self, after_step: int) -> None:
        self.after_step = after_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.after_step:
            with torch.no_grad():
                next(pl_module.parameters()).view(-1)[0] = float("nan")


def test_a_checkpoint_of_non_finite_weights_is_refused(tmp_path):
    ckpt = ModelCheckpoint(tmp_path / "ckpt", every_n_train_steps=1, save_last=True)
    t = trainer(tmp_path, NonFiniteGuard(), callbacks=[PoisonWeights(after_step=2), ckpt])
    with pytest.raises(NonFiniteLossError, match="refusing to save a checkpoint at step 2"):
        t.fit(transfusion_module(), DataLoader([latent_batch(seed=s) for s in range(5)], batch_size=None))
    last = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)
    assert last["global_step"] == 1 and finite(last["state_dict"])


def test_a_loss_far_above_chance_warns_naming_the_learning_rate(tmp_path):
    torch.manual_seed(0)
    cfg = TransformerConfig(dim=32, n_layers=2, n_heads=4, n_modalities=3, sparsity="mot")
    model = MultiModalLM(backbone=cfg, vocab_size=40, optimizer=partial(torch.optim.AdamW, lr=10.0))
    t = trainer(tmp_path, NonFiniteGuard(check_after_steps=5), steps=6)
    chance = r"above 2.0 x chance \(ln\(vocab_size 40\) = 3.69\)"
    with pytest.warns(UserWarning, match=rf"after 5 optimizer steps .* {chance}: the learning rate \(10 "):
        t.fit(model, DataLoader([token_batch(seed=s) for s in range(6)], batch_size=None))


def test_validation_logs_a_non_finite_loss_instead_of_dropping_it(tmp_path):
    torch.manual_seed(0)
    cfg = TransformerConfig(dim=32, n_layers=2, n_heads=4, n_modalities=3, sparsity="mot")
    model = MultiModalLM(backbone=cfg, vocab_size=40, val_set_names=["a"])
    model.configure_model()
    with torch.no_grad():
        model.net.head.weight[7, 0] = float("inf")  # logits of every position: inf - inf = NaN
    t = pl.Trainer(accelerator="cpu", logger=CSVLogger(tmp_path), enable_progress_bar=False)
    t.validate(model, DataLoader([token_batch(seed=s) for s in range(2)], batch_size=None))
    tags = logged(Path(t.logger.log_dir) / "metrics.csv")
    for tag in ("val/loss", "val/loss_text", "val/loss_image", "val/a/loss_speech", "val/loss_text_se"):
        assert tag in tags and math.isnan(tags[tag][0]), tag


@pytest.mark.slow
def test_the_issue_lr_1e6_run_stops_and_last_ckpt_stays_finite(demo_env, tmp_path):
    """`mot fit` at lr 1e6 trained on NaN and replaced last.ckpt with NaN weights before the guard."""
    args = ["--config", str(CONFIGS / "speech/mot.yaml"), "--trainer.max_steps", "30",
            "--model.optimizer.init_args.lr", "1.0e6", "--checkpoint.every_n_train_steps", "1",
            "--trainer.limit_val_batches", "2", "--trainer.log_every_n_steps", "1"]
    with pytest.raises(NonFiniteLossError, match=r"optimizer step \d+: non-finite") as error:
        run_fit(args, demo_env, tmp_path)
    step = int(re.search(r"optimizer step (\d+)", str(error.value)).group(1))
    assert "last.ckpt" in str(error.value) and step > 0
    last = torch.load(run_dir(tmp_path / "speech" / "mot") / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["global_step"] == step  # saved after the last good step, not replaced afterwards
    assert finite(last["state_dict"])
