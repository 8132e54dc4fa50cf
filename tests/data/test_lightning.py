"""The DataModule under a real Lightning Trainer: batches arrive as MultiModalBatch, named val sets."""

from __future__ import annotations

import lightning.pytorch as pl
import torch

from mot_lightning.data.batch import MultiModalBatch
from mot_lightning.data.sources import SourceConfig

from .helpers import make_datamodule, mixed_corpus


class TinyLM(pl.LightningModule):
    def __init__(self, vocab_size: int, val_set_names: list[str]) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(vocab_size, 8)
        self.head = torch.nn.Linear(8, vocab_size)
        self.val_set_names = val_set_names
        self.seen: list[tuple[str, int]] = []

    def loss(self, batch: MultiModalBatch) -> torch.Tensor:
        logits = self.head(self.emb(batch.tokens))  # (B, T, V)
        return torch.nn.functional.cross_entropy(
            logits.flatten(0, 1), batch.targets.flatten(), ignore_index=-100
        )

    def training_step(self, batch, batch_idx):
        assert isinstance(batch, MultiModalBatch)
        self.seen.append(("train", batch.batch_size))
        return self.loss(batch)

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        name = self.val_set_names[dataloader_idx]
        self.seen.append((name, batch.batch_size))
        self.log(f"val/loss_{name}", self.loss(batch), add_dataloader_idx=False)

    def on_validation_epoch_end(self):
        counts = self.trainer.datamodule.skip_counts()
        self.log_dict({f"data/skipped_{k}": float(v) for k, v in counts.items()}, reduce_fx="sum")

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_fit_with_named_validation_sets(tmp_path):
    mixed_corpus(tmp_path, n=16, shards=4)
    shards = str(tmp_path / "mixed-{000000..000003}.tar")
    dm = make_datamodule(
        tmp_path,
        [SourceConfig("train", shards)],
        num_workers=1,
        train_batches_per_epoch=3,
        val_sets=[SourceConfig("val_a", shards), SourceConfig("val_b", str(tmp_path / "mixed-000000.tar"))],
    )
    model = TinyLM(dm.vocab_size, dm.val_set_names)
    trainer = pl.Trainer(
        max_steps=4,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, datamodule=dm)
    names = [name for name, _ in model.seen]
    assert names.count("train") == 4
    assert {"val_a", "val_b"} <= set(names)
    assert (
        "val/loss_val_a" in trainer.callback_metrics and "data/skipped_bad_image" in trainer.callback_metrics
    )
    # 4 steps over epochs of 3 batches: the second epoch (seed 1) handed out 1 batch
    assert trainer.train_dataloader.state_dict() == {"epoch": 1, "yielded": 1}
