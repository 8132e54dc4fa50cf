"""The memory model behind `mot plan` (``model/memory.py``): its parameter count is the built model's, its
activation term is what autograd keeps for this implementation's backward, and sharding divides what it should."""
from __future__ import annotations

import pytest
import torch

from mot_lightning.modality import Modality
from mot_lightning.model import TransformerConfig
from mot_lightning.model.lm import TokenLM
from mot_lightning.model.memory import RunShape, activation_values_per_token, memory_plan, total_parameters
from mot_lightning.objectives import NextToken
from tests.objectives.batches import token_batch

CASES = [dict(sparsity="mot"), dict(sparsity="dense"), dict(sparsity="mot", untie=["ffn"], towers=[0, 0, 1])]


@pytest.mark.parametrize("latent_dim", [0, 8])
@pytest.mark.parametrize("kw", CASES)
def test_parameter_count_is_the_built_models(kw, latent_dim):
    cfg = TransformerConfig(dim=32, n_layers=2, n_heads=4, n_modalities=3, **kw)
    net = TokenLM(cfg, 40, latent_dim)
    total, outside = total_parameters(cfg, 40, latent_dim)
    assert total == sum(p.numel() for p in net.parameters())
    assert total - outside == sum(p.numel() for p in net.backbone.parameters())


def saved_values(net: TokenLM, batch, z_loss: float) -> int:
    """Values autograd keeps for the backward of one NextToken loss (distinct storages, weights left out)."""
    objective = NextToken(z_loss=z_loss)
    objective.setup([Modality(m) for m in range(3)], 0)
    seen: dict[int, int] = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        objective.loss(net, batch, stage="train", seed=0)
    weights = {p.untyped_storage().data_ptr() for p in net.parameters()}
    return sum(n for ptr, n in seen.items() if ptr not in weights) // 4


@pytest.mark.parametrize("kw", CASES[:2])
@pytest.mark.parametrize("z_loss", [0.0, 1e-5])
def test_activation_term_matches_what_autograd_keeps(kw, z_loss):
    cfg = TransformerConfig(dim=64, n_layers=3, n_heads=4, n_modalities=3, **kw)
    torch.manual_seed(0)
    net, batch = TokenLM(cfg, 200), token_batch(B=2, T=64, V=200, seed=0)
    shape = RunShape(vocab_size=200, seq_len=64, batch_size=2, z_loss=bool(z_loss), norms="hand")  # CPU float32
    predicted = activation_values_per_token(cfg, shape) * 2 * 64
    assert saved_values(net, batch, z_loss) == pytest.approx(predicted, rel=0.1)


def test_sharding_divides_weights_gradients_and_optimizer_state():
    cfg = TransformerConfig.from_preset("chameleon-443m", n_modalities=3, sparsity="mot")
    one = memory_plan(cfg, RunShape(vocab_size=65536, seq_len=4096))
    eight = memory_plan(cfg, RunShape(vocab_size=65536, seq_len=4096, world_size=8, strategy="fsdp"))
    ddp = memory_plan(cfg, RunShape(vocab_size=65536, seq_len=4096, world_size=8, strategy="ddp"))
    total, _ = total_parameters(cfg, 65536)
    assert one.parameters == one.gradients == 4 * total and one.optimizer == 8 * total
    for term in ("parameters", "gradients", "optimizer"):
        assert getattr(eight, term) == pytest.approx(getattr(one, term) / 8)
    assert eight.activations == one.activations and ddp.transient > one.transient  # DDP's gradient buckets
    eager = memory_plan(cfg, RunShape(vocab_size=65536, seq_len=4096, world_size=8, strategy="fsdp",
                                      sharded_init=False))
    assert eight.startup < 0.2 * eager.startup  # the meta build never holds the whole model
