"""``model.init_from``: dense -> MoT (towers copied: the same function), text-only -> multimodal, a larger tower
map, a larger joint vocabulary mapped by modality range, and what does not fit refused with names."""
from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Callback

from mot_lightning.checkpoints.model_config import plain_config
from mot_lightning.model import TransformerConfig
from mot_lightning.model.lm import TokenLM
from mot_lightning.training.warm_start import WarmStart, warm_start
from tests.app.controls_run import LAYOUT, ROWS, VOCAB, T, fit, tiny_module
from tests.numerics import assert_close, transformer_reduction
from tests.objectives.batches import token_batch

SMALL = {"text": 13, "special": 7, "image": 0, "speech": 0}  # a text-only run's vocabulary: ids 0-19


def write_checkpoint(path, **kw) -> dict[str, torch.Tensor]:
    """A checkpoint as `mot fit` writes it (state_dict + plain hyperparameters) of a freshly drawn model."""
    module = tiny_module(**kw)
    module.configure_model()
    state = module.state_dict()
    torch.save({"state_dict": state, "hyper_parameters": plain_config(dict(module.hparams))}, path)
    return {k[len("net."):]: v for k, v in state.items()}


def _net(layout=LAYOUT, **kw) -> TokenLM:
    cfg = {"dim": 32, "n_layers": 2, "n_heads": 4, "n_modalities": 3, "sparsity": "mot", **kw}
    return TokenLM(TransformerConfig(**cfg), sum(layout.values()))


def test_a_dense_checkpoint_starts_an_mot_that_computes_the_dense_function(tmp_path):
    """Trained dense run -> `fit` of an MoT with init_from: its first-step logits are the dense model's."""
    torch.set_default_dtype(torch.float64)  # algebra: both sides in float64 (tests/numerics.py)
    try:
        torch.manual_seed(0)
        dense = tiny_module(sparsity="dense")
        trainer = fit(dense, tmp_path / "dense", 2)
        trainer.save_checkpoint(tmp_path / "dense.ckpt")
        batch = token_batch(B=ROWS, T=T, V=VOCAB, seed=0)
        logits = {}

        class Record(Callback):
            def on_train_batch_start(self, trainer, pl_module, b, batch_idx):
                if trainer.global_step == 0:
                    with torch.no_grad():
                        logits["mot"] = pl_module.net(batch.tokens, batch.modality, positions=batch.positions,
                                                      doc_ids=batch.doc_ids)

        torch.manual_seed(1)  # another init everywhere: only the warm start makes them agree
        mot = tiny_module(init_from=WarmStart(checkpoint=str(tmp_path / "dense.ckpt")))
        fit(mot, tmp_path / "mot", 1, callbacks=[Record()])
        with torch.no_grad():
            logits["dense"] = dense.net(batch.tokens, batch.modality, positions=batch.positions,
                                        doc_ids=batch.doc_ids)
    finally:
        torch.set_default_dtype(torch.float32)
    assert logits["mot"].dtype == torch.float64
    assert_close(logits["mot"], logits["dense"], reduction=transformer_reduction(2, 32, 128, T))
    assert not torch.equal(mot.net.backbone.layers[0].ffn.w2.weights[0], mot.net.backbone.layers[0].ffn.w2.weights[1])


def test_text_only_checkpoint_into_a_multimodal_model(tmp_path):
    src = write_checkpoint(tmp_path / "text.ckpt", n_modalities=1, vocab_size=20, vocab_layout=SMALL)
    for new_towers in ("copy_text", "fresh"):
        torch.manual_seed(2)
        net = _net()
        init = {n: p.detach().clone() for n, p in net.named_parameters()}
        report = warm_start(net, WarmStart(str(tmp_path / "text.ckpt"), new_towers=new_towers), LAYOUT)
        params = dict(net.named_parameters())
        for name, w in src.items():
            if ".weights.0" in name:  # the text tower loads; image and speech copy it or keep their init
                for k in (1, 2):
                    twin = params[name.replace(".weights.0", f".weights.{k}")]
                    assert torch.equal(twin, w if new_towers == "copy_text" else init[name.replace(".weights.0",
                                                                                             f".weights.{k}")])
            if name in ("embed.weight", "head.weight"):  # rows 0-19 (text, specials) loaded; 20-39 new
                assert torch.equal(params[name][:20], w) and torch.equal(params[name][20:], init[name][20:])
            else:
                assert torch.equal(params[name], w), name
        assert report.new_rows == {"embed.weight": 20, "head.weight": 20}
        assert (new_towers == "fresh") == any(n.endswith(".weights.1") for n in report.fresh)


def test_an_mot_checkpoint_into_a_larger_tower_map(tmp_path):
    src = write_checkpoint(tmp_path / "grouped.ckpt", towers=[0, 0, 1])  # text+image share tower 0
    net = _net()
    warm_start(net, WarmStart(str(tmp_path / "grouped.ckpt")), LAYOUT)
    params = dict(net.named_parameters())
    for name, w in src.items():
        if ".weights.0" in name and name.startswith("backbone."):
            assert torch.equal(params[name], w) and torch.equal(params[name.replace(".weights.0", ".weights.1")], w)
        elif ".weights.1" in name:  # the checkpoint's speech tower -> this model's speech tower (2)
            assert torch.equal(params[name.replace(".weights.1", ".weights.2")], w)
    only_text = _net()  # chosen towers only: the others keep their initialisation
    init = {n: p.detach().clone() for n, p in only_text.named_parameters()}
    report = warm_start(only_text, WarmStart(str(tmp_path / "grouped.ckpt"), towers={"text": "text"}), LAYOUT)
    assert {n for n in report.fresh if n.startswith("backbone.")} == {
        n for n in init if n.startswith("backbone.") and not n.endswith(".weights.0")}
    assert all(torch.equal(p, init[n]) for n, p in only_text.named_parameters() if n in report.fresh)


def test_vocabulary_rows_map_by_modality_range(tmp_path):
    old = {"text": 9, "special": 7, "image": 10, "speech": 0}  # 26 ids; the new text block grows to 13
    src = write_checkpoint(tmp_path / "old.ckpt", vocab_size=26, vocab_layout=old)
    for new_rows in ("init", "mean"):
        torch.manual_seed(3)
        net = _net()
        init = net.head.weight.detach().clone()
        report = warm_start(net, WarmStart(str(tmp_path / "old.ckpt"), new_rows=new_rows), LAYOUT)
        for name in ("embed.weight", "head.weight"):
            w, s = dict(net.named_parameters())[name], src[name]
            assert torch.equal(w[:9], s[:9])  # text
            assert torch.equal(w[13:20], s[9:16])  # the specials moved with the text block's growth
            assert torch.equal(w[20:30], s[16:26])  # image codes
            new = torch.cat([w[9:13], w[30:]])  # grown text ids and the new speech block
            expected = s.mean(0).expand_as(new) if new_rows == "mean" else torch.cat([init[9:13], init[30:]])
            if name == "head.weight" or new_rows == "mean":
                assert torch.equal(new, expected.to(new.dtype)), (name, new_rows)
        assert report.new_rows["head.weight"] == 4 + 10


def test_a_checkpoint_without_vocab_layout_maps_rows_by_id_with_a_warning(tmp_path):
    src = write_checkpoint(tmp_path / "plain.ckpt", vocab_size=26, vocab_layout=None)
    net = _net()
    with pytest.warns(UserWarning, match="records no vocabulary layout"):
        warm_start(net, WarmStart(str(tmp_path / "plain.ckpt")), LAYOUT)
    assert torch.equal(net.embed.weight[:26], src["embed.weight"])


@pytest.mark.parametrize("source, target, names", [
    ({"dim": 64}, {}, ["backbone.layers.0.attn.wqkv.weights.0", "(192, 64) vs model (96, 32)"]),
    ({"n_layers": 1}, {}, ["backbone.layers.1.attn.wqkv.weights.0: not in the checkpoint"]),
    ({"sparsity": "mot"}, {"sparsity": "dense"}, ["unties backbone.layers.0.attn.wqkv.weights into towers"]),
    ({"vocab_size": 46, "vocab_layout": {"text": 13, "special": 7, "image": 16, "speech": 10}}, {},
     ["image block has 16 ids, this model's 10"]),
    ({"n_modalities": 3}, {"towers": [0, 0, 1]}, ["tower 0 (text+image) would start from several"]),
])
def test_what_does_not_fit_is_refused_naming_it(tmp_path, source, target, names):
    write_checkpoint(tmp_path / "src.ckpt", **source)
    with pytest.raises(ValueError, match="does not fit this model") as err:
        warm_start(_net(**target), WarmStart(str(tmp_path / "src.ckpt")), LAYOUT)
    for name in names:
        assert name in str(err.value)
