"""``model.freeze``: frozen towers and vocabulary rows stay bitwise unchanged while the rest trains, hold no
optimizer state, unfreeze at the scheduled step, and a resumed run trains exactly as the unbroken one."""
from __future__ import annotations

import pytest
import torch

from mot_lightning.training.freezing import Freeze
from tests.app.controls_run import LAYOUT, ROWS, VOCAB, Snapshots, T, fit, tiny_module
from tests.objectives.batches import token_batch

TEXT_TOWER = ".weights.0"  # fully untied MoT: tower 0 serves text only


def _run(tmp_path, steps: int, freeze: Freeze, **kw) -> tuple[Snapshots, object]:
    torch.manual_seed(0)
    module, snapshots = tiny_module(freeze=freeze, **kw), Snapshots()
    trainer = fit(module, tmp_path, steps, callbacks=[snapshots])
    return snapshots, trainer


def _tower(snapshots: Snapshots, step: int, tower: int) -> dict[str, torch.Tensor]:
    return {n: w for n, w in snapshots.weights[step].items() if n.startswith("net.backbone.")
            and n.endswith(f".weights.{tower}")}


def test_a_frozen_tower_is_bitwise_unchanged_has_no_state_and_unfreezes_at_its_step(tmp_path):
    snaps, trainer = _run(tmp_path, 5, Freeze(modalities=["text"], until_step=3))
    start = _tower(snaps, 0, 0)
    assert start and len(start) == 2 * 8 + 1  # 8 untied weights per layer and the final norm
    for step in (1, 2, 3):  # steps 1..3 ran frozen (the 3rd optimizer step is step index 2)
        for name, w in _tower(snaps, step, 0).items():
            assert torch.equal(w, start[name]), (step, name)
            assert not snaps.has_state[step][name], (step, name)
        for tower in (1, 2):  # the other towers train from the first step
            moved = [not torch.equal(w, _tower(snaps, 0, tower)[n]) for n, w in _tower(snaps, step, tower).items()]
            assert sum(moved) >= len(moved) - 2, (step, tower)  # (norms of a tower may lag a step)
    after = _tower(snaps, 5, 0)
    assert all(snaps.has_state[5][n] for n in after)  # unfrozen at step 3: state from its first update
    assert sum(not torch.equal(w, start[n]) for n, w in after.items()) >= len(after) - 2
    assert all(p.requires_grad for p in trainer.lightning_module.parameters())


def test_shared_parts_and_tied_components_follow_the_modalities_using_them(tmp_path):
    snaps, trainer = _run(tmp_path, 2, Freeze(modalities=["text"], shared=["head"]), untie=["ffn"])
    first, last = snaps.weights[0], snaps.weights[2]
    frozen = {n for n, p in trainer.lightning_module.named_parameters() if not p.requires_grad}
    assert "net.head.weight" in frozen and "net.embed.weight" not in frozen
    assert {n for n in frozen if ".ffn." in n} == {f"net.backbone.layers.{i}.ffn.{w}.weights.0"
                                                   for i in (0, 1) for w in ("w13", "w2")}
    assert not any(".attn." in n for n in frozen)  # tied attention serves image and speech too: trains
    for name in frozen:
        assert torch.equal(last[name], first[name]), name
    assert not torch.equal(last["net.embed.weight"], first["net.embed.weight"])


@pytest.mark.parametrize("special_rows", [True, False])
def test_frozen_vocabulary_rows_are_bitwise_unchanged_and_the_others_train(tmp_path, special_rows):
    snaps, trainer = _run(tmp_path, 3, Freeze(modalities=["text"], rows=["embed", "head"], special_rows=special_rows))
    text = LAYOUT["text"] + LAYOUT["special"] * special_rows  # joint ids [0, 13) text, [13, 20) special tokens
    inputs = [token_batch(B=ROWS, T=T, V=VOCAB, seed=s) for s in (0, 1)]  # a document's last token reaches no
    seen = torch.cat([b.tokens[:, :-1][b.targets[:, :-1] >= 0] for b in inputs]).unique()  # loss: not "seen"
    trained = {"net.embed.weight": seen[seen >= text], "net.head.weight": torch.arange(text, VOCAB)}
    for name, ids in trained.items():  # an embedding row moves when its token is seen; a head row always
        before, after = snaps.weights[0][name], snaps.weights[3][name]
        assert torch.equal(after[:text], before[:text]), name
        assert len(ids) > 10 and (after[ids] != before[ids]).any(dim=1).all(), name  # (specials too if trained)
        assert snaps.has_state[3][name]  # the matrix trains: its other rows have moments
    groups = {g["name"]: g for g in trainer.optimizers[0].param_groups}
    module = trainer.lightning_module
    no_decay = {id(p) for p in groups["no_decay"]["params"]}
    assert id(module.net.head.weight) in no_decay and groups["no_decay"]["weight_decay"] == 0.0


def test_resumed_run_unfreezes_and_trains_exactly_as_the_unbroken_one(tmp_path):
    freeze = Freeze(modalities=["text"], rows=["embed"], until_step=3)
    unbroken, _ = _run(tmp_path / "a", 5, freeze)
    _, first = _run(tmp_path / "b", 2, freeze)
    first.save_checkpoint(tmp_path / "step2.ckpt")
    torch.manual_seed(1)  # another init: the checkpoint must restore everything
    module, resumed = tiny_module(freeze=freeze), Snapshots()
    fit(module, tmp_path / "b", 5, ckpt_path=str(tmp_path / "step2.ckpt"), callbacks=[resumed])
    for name, w in unbroken.weights[5].items():
        assert torch.equal(resumed.weights[5][name], w), name


@pytest.mark.parametrize("freeze, match", [
    (Freeze(modalities=["video"]), "unknown modality"),
    (Freeze(shared=["tail"]), "unknown or absent"),
    (Freeze(modalities=["text"], shared=["embed"], rows=["embed"]), "choose one"),
    (Freeze(rows=["head"]), "needs model.freeze.modalities"),
    (Freeze(shared=["latent"]), "no latent ends"),
])
def test_bad_freeze_specs_are_refused_with_names(freeze, match):
    module = tiny_module(freeze=freeze)
    with pytest.raises(ValueError, match=match):
        module.configure_model()
