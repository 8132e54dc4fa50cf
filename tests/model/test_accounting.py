"""Parameter/FLOPs accounting agrees with the modules and with gradients actually touched."""
import pytest
import torch

from mot_lightning.model import Transformer, TransformerConfig, backbone_stats
from mot_lightning.model.accounting import count_parameters

T = 12


@pytest.mark.parametrize("kw", [
    dict(sparsity="dense"),
    dict(sparsity="mot"),
    dict(sparsity="mot", untie=("ffn",)),
    dict(sparsity="mot", towers=[0, 0, 1], n_kv_heads=2),
    dict(sparsity="mot", qk_norm=False),
    dict(sparsity="mot", qkv_bias=True, attn_head_dim=16, n_kv_heads=2),  # Qwen2 biases, Qwen3's head width
])
def test_total_and_active_params_match_the_module(kw):
    cfg = TransformerConfig(dim=32, n_layers=2, n_heads=4, n_modalities=3, **kw)
    model = Transformer(cfg)
    stats = backbone_stats(cfg, T)
    assert stats.total_params == count_parameters(model)
    for m in range(3):
        model.zero_grad()
        model(torch.randn(1, T, 32), torch.full((1, T), m)).pow(2).sum().backward()
        # every per-tower slice a token of modality m touched has a non-zero gradient
        touched = sum(p.grad[k].numel() for p in model.parameters() for k in range(p.shape[0])
                      if p.grad[k].abs().sum() > 0)
        assert touched == stats.active_params[m]


def test_mot_active_params_and_flops_equal_dense():
    for preset in ("tiny", "chameleon-443m", "chameleon-7b"):
        dense = TransformerConfig.from_preset(preset, n_modalities=3, sparsity="dense")
        mot = TransformerConfig.from_preset(preset, n_modalities=3, sparsity="mot")
        d, m = backbone_stats(dense, 4096, vocab_size=65536), backbone_stats(mot, 4096, vocab_size=65536)
        assert m.active_params == d.active_params
        assert m.flops_per_token == d.flops_per_token
        assert m.total_params == pytest.approx(3 * d.total_params, rel=1e-12)


def test_flops_formula_known_value():
    cfg = TransformerConfig(dim=64, n_layers=2, n_heads=4, n_modalities=1, qk_norm=False, ffn_hidden=128)
    matmul = 2 * (64 * 64 * 3 + 64 * 64) + 2 * 3 * 64 * 128  # per layer x 2 layers
    attn = 4 * 2 * 64 * (T + 1) / 2
    assert backbone_stats(cfg, T).flops_per_token[0] == 3 * (2 * matmul + attn)
    assert backbone_stats(cfg, T, causal=False).flops_per_token[0] == 3 * (2 * matmul + 4 * 2 * 64 * T)


@pytest.mark.parametrize("preset,billions", [("chameleon-37m", 0.037), ("chameleon-94m", 0.094),
                                             ("chameleon-443m", 0.443), ("chameleon-880m", 0.88),
                                             ("chameleon-1.5b", 1.5), ("chameleon-7b", 7.0)])
def test_paper_ladder_sizes_with_vocabulary(preset, billions):
    """Paper sizes count a 65,536 vocabulary with separate input embedding and output head."""
    cfg = TransformerConfig.from_preset(preset, sparsity="dense")
    total = backbone_stats(cfg, 4096).total_params + 2 * 65536 * cfg.dim
    assert total / 1e9 == pytest.approx(billions, rel=0.12)
