"""Data-mix schedules (data/mix.py) on the real data module over the procedural world: the weights change
the sources the batches hold at the scheduled optimizer step (under Lightning, with gradient accumulation
and two workers), a resumed loader gives the unbroken run's batches, and bad schedules fail naming why."""
from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch

from mot_lightning.data.mix import BatchClock, MixSchedule
from mot_lightning.data.options import LoaderConfig
from mot_lightning.data.sources import SourceConfig
from mot_lightning.modality import Modality
from mot_lightning.world.virtual import shard_pattern

from .helpers import make_datamodule

TEXT, IMAGE = 0, 1  # source indices below


def sources() -> list[SourceConfig]:
    return [SourceConfig("text", shard_pattern("train", "text", 8)),
            SourceConfig("image_caption", shard_pattern("train", "image_caption", 8))]


def switch_at(step: int) -> list[dict]:
    """Only text before ``step``, only image captions from it on."""
    return [{"step": 0, "weights": {"text": 1.0, "image_caption": 0.0}},
            {"step": step, "weights": {"text": 0.0, "image_caption": 1.0}}]


def doc_sources(batch) -> list[int]:
    """The source of every document in the batch, checked against its content: image captions hold image
    tokens, the text source's documents none."""
    out = []
    for row in range(batch.batch_size):
        for d in batch.doc_ids[row].unique().tolist():
            at = batch.doc_ids[row] == d
            ids = batch.source_ids[row][at].unique().tolist()
            assert len(ids) == 1, "a document has one source"
            if ids[0] < 0:
                assert (batch.targets[row][at] == -100).all(), "only padding lacks a source"
                continue
            has_image = bool((batch.modality[row][at] == int(Modality.IMAGE)).any())
            assert has_image == (ids[0] == IMAGE), "source_ids agree with the document's content"
            out.append(ids[0])
    return out


class Recorder(pl.LightningModule):
    """Records, for every training batch, the optimizer step it trains and the sources of its documents."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[tuple[int, list[int]]] = []

    def training_step(self, batch, batch_idx):
        self.seen.append((self.trainer.global_step, doc_sources(batch)))
        return (self.w * batch.tokens.float().mean()).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def test_schedule_changes_the_sources_at_the_optimizer_step_under_lightning(tmp_path):
    """5 batches per epoch, 2 per optimizer step (3 steps per epoch: Lightning steps after an epoch's last
    batch), 2 workers, switch at step 4 (the second epoch's second step): every batch before it holds only
    text, every batch of later steps only image captions; the step's first batches may still hold the one
    row each worker kept open (shuffle_buffer 0, pack_open_rows 1)."""
    dm = make_datamodule(tmp_path, sources(), val_sets=[], seq_len=256, batch_size=2, num_workers=2,
                         shuffle_buffer=0, pack_open_rows=1, train_batches_per_epoch=5,
                         weights_schedule=switch_at(4))
    module = Recorder()
    trainer = pl.Trainer(max_epochs=3, accumulate_grad_batches=2, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                         num_sanity_val_steps=0, accelerator="cpu", devices=1)
    trainer.fit(module, datamodule=dm)
    assert trainer.global_step == 9 and len(module.seen) == 15
    for step, found in module.seen:
        if step < 4:
            assert set(found) == {TEXT}, (step, found)
        elif step > 4:
            assert set(found) == {IMAGE}, (step, found)
        else:
            assert found.count(TEXT) <= 1, (step, found)  # a worker's open row: at most one document here
    assert dm.train_source_names == ["text", "image_caption"]


def test_a_resumed_loader_gives_the_unbroken_batches_and_the_change_drains_as_documented(tmp_path):
    """Shuffling and first-fit packing on: the batches of a loader resumed anywhere equal the unbroken
    loader's (tokens and source ids); no image caption before the switch, and after it at most
    shuffle_buffer + pack_open_rows text documents per worker."""
    make = lambda: make_datamodule(  # noqa: E731
        tmp_path, sources(), val_sets=[], seq_len=256, batch_size=2, num_workers=2, shuffle_buffer=8,
        pack_open_rows=2, train_batches_per_epoch=6, weights_schedule=switch_at(8))
    dm = make()
    dm.setup("fit")
    unbroken = dm.train_dataloader()
    reference = [b for _ in range(3) for b in unbroken]  # 18 batches over 3 epochs, one step each
    found = [doc_sources(b) for b in reference]
    assert all(set(f) == {TEXT} for f in found[:8])
    late_text = sum(f.count(TEXT) for f in found[8:])
    assert 0 < late_text <= 2 * (8 + 2)  # two workers, each draining its buffer and open rows
    assert set(found[-1]) == {IMAGE}
    for consumed in (4, 9):  # mid first epoch; mid second epoch, after the switch
        first = make()
        first.setup("fit")
        loader = first.train_dataloader()
        it, got = iter(loader), []
        while len(got) < consumed:
            try:
                got.append(next(it))
            except StopIteration:
                it = iter(loader)
        state = loader.state_dict()
        resumed_dm = make()
        resumed_dm.setup("fit")
        resumed = resumed_dm.train_dataloader()
        resumed.load_state_dict(state)
        rest = []
        while len(got) + len(rest) < len(reference):
            rest += list(resumed)
        for a, b in zip(got + rest, reference, strict=True):
            assert torch.equal(a.tokens, b.tokens) and torch.equal(a.source_ids, b.source_ids), consumed


def test_batch_clock_follows_lightning_steps():
    clock = BatchClock(5, 2)  # steps after batches 1, 3, 4 of every epoch
    assert [clock.step(0, b) for b in range(5)] == [0, 0, 1, 1, 2]
    assert [clock.step(1, b) for b in range(5)] == [3, 3, 4, 4, 5]
    assert BatchClock(7).step(2, 3) == 17


def test_schedule_carries_unnamed_sources_and_starts_from_the_source_weights():
    mix = MixSchedule.build([{"step": 10, "weights": {"b": 0.0}}, {"step": 20, "weights": {"a": 5}}],
                            ["a", "b"], [1.0, 2.0])
    assert mix.at(0) == mix.at(9) == (1.0, 2.0)
    assert mix.at(10) == mix.at(19) == (1.0, 0.0)
    assert mix.at(20) == mix.at(10**9) == (5.0, 0.0)


@pytest.mark.parametrize("entries, message", [
    ([{"step": 0, "weights": {"a": 1}}, {"step": 0, "weights": {"a": 2}}], "increase strictly"),
    ([{"step": 5, "weights": {"a": 1}}, {"step": 3, "weights": {"a": 2}}], "increase strictly"),
    ([{"step": -1, "weights": {"a": 1}}], "whole number >= 0"),
    ([{"step": 1.5, "weights": {"a": 1}}], "whole number >= 0"),
    ([{"step": 0, "weights": {"a": -1}}], ">= 0, got -1"),
    ([{"step": 0, "weights": {"a": float("nan")}}], "finite"),
    ([{"step": 0, "weights": {}}], "names no source"),
    ([{"step": 0, "weight": {"a": 1}}], "unknown keys"),
])
def test_bad_schedules_fail_when_the_config_is_read(entries, message):
    with pytest.raises(ValueError, match=message) as err:
        LoaderConfig(weights_schedule=entries)
    assert "data.loader.weights_schedule" in str(err.value)


def test_schedules_naming_unknown_sources_or_leaving_none_fail_before_reading(tmp_path):
    bad_name = [{"step": 0, "weights": {"text": 1.0, "captions": 1.0}}]
    dm = make_datamodule(tmp_path, sources(), val_sets=[], weights_schedule=bad_name)
    with pytest.raises(ValueError, match=r"unknown sources \['captions'\].*\['text', 'image_caption'\]"):
        dm.check_sources()
    none_left = [{"step": 3, "weights": {"text": 0.0, "image_caption": 0}}]
    dm = make_datamodule(tmp_path, sources(), val_sets=[], weights_schedule=none_left)
    with pytest.raises(ValueError, match=r"\[0\] \(step 3\) leaves every source at weight 0"):
        dm.setup("fit")
