"""The meta-device build (``model/meta_init.py``) gives the eager constructor's weights, bitwise, for every
backbone variant, leaves nothing on the meta device and the global random state where the eager build leaves
it. (Sharded over 2 processes: ``tests/app/test_sharded_init.py``.)"""
from __future__ import annotations

import pytest
import torch

from mot_lightning.model import TransformerConfig
from mot_lightning.model.lm import TokenLM
from mot_lightning.model.meta_init import build_on_meta, materialize, meta_tensors, named_tensors

VARIANTS = {
    "dense": dict(sparsity="dense"),
    "mot": dict(sparsity="mot"),
    "mot_copy": dict(sparsity="mot", tower_init="copy"),
    "moe": dict(sparsity="moe"),
    "hybrid": dict(sparsity="mot", moe_towers=[0]),
    "post_norm_ffn_only_grouped": dict(sparsity="mot", norm_layout="post_sublayer", untie=["ffn"], towers=[0, 0, 1]),
}


@pytest.mark.parametrize("latent_dim", [0, 8])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_meta_build_equals_the_eager_build(variant, latent_dim):
    cfg = TransformerConfig(dim=32, n_layers=2, n_heads=4, n_modalities=3, **VARIANTS[variant])
    torch.manual_seed(3)
    eager = named_tensors(TokenLM(cfg, 50, latent_dim))
    after_eager = torch.rand(4)  # the generator's state after the build
    torch.manual_seed(3)
    net = build_on_meta(cfg, 50, latent_dim)
    assert len(meta_tensors(net)) == len(eager)  # everything starts on meta: nothing allocated, nothing drawn
    materialize(net, "cpu")
    assert meta_tensors(net) == []
    meta = named_tensors(net)
    assert meta.keys() == eager.keys()
    for name, value in eager.items():  # same draws in the same order: bitwise
        assert torch.equal(meta[name], value), name
    assert torch.equal(torch.rand(4), after_eager)


def test_copied_towers_are_equal_after_the_meta_build():
    cfg = TransformerConfig(dim=32, n_layers=2, n_heads=4, n_modalities=3, sparsity="mot", tower_init="copy")
    net = build_on_meta(cfg, 50)
    materialize(net, "cpu")
    w = net.backbone.layers[1].ffn.w13.weights
    assert torch.equal(w[0], w[1]) and torch.equal(w[0], w[2]) and w[0].std() > 0


def test_a_model_that_no_longer_matches_its_parts_is_refused():
    cfg = TransformerConfig(dim=32, n_layers=2, n_heads=4, n_modalities=2)
    net = build_on_meta(cfg, 50)
    net.extra = torch.nn.Linear(2, 2, device="meta")  # a part constructor_parts does not draw
    with pytest.raises(RuntimeError, match="left uninitialised"):
        materialize(net, "cpu")
