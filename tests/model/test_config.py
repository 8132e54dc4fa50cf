"""Config validation: every mistake names itself and says what to do."""
import pytest

from mot_lightning.model import TransformerConfig


@pytest.mark.parametrize("kw,match", [
    (dict(dim=30, n_heads=4), "divisible by n_heads"),
    (dict(n_heads=4, n_kv_heads=3), "multiple of n_kv_heads"),
    (dict(n_modalities=3, towers=[0, 1]), "one tower index per modality"),
    (dict(n_modalities=3, towers=[0, 2, 2]), "without gaps"),
    (dict(untie=("ffn", "mlp")), "unknown components"),
    (dict(sparsity="dense", n_modalities=2, untie=("ffn",)), "unties nothing"),
    (dict(sparsity="sparse"), "sparsity must be"),
    (dict(norm_layout="post"), "norm_layout must be"),
    (dict(attn_backend="xformers"), "attn_backend must be"),
])
def test_bad_configs_raise_clear_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        TransformerConfig(**kw)


@pytest.mark.parametrize("kw,match", [
    (dict(sparsity="moe", n_modalities=2, untie=("ffn",)), "unties nothing"),
    (dict(sparsity="moe", n_modalities=2, towers=[0, 1]), "has one tower"),
    (dict(sparsity="moe", moe_towers=[0]), "needs sparsity='mot'"),
    (dict(sparsity="mot", n_modalities=2, untie=("attn",), moe_towers=[0]), "'ffn' untied"),
    (dict(sparsity="mot", n_modalities=2, moe_towers=[2]), "distinct tower indices"),
    (dict(sparsity="moe", moe_router="hash"), "moe_router must be"),
    (dict(sparsity="moe", top_k=5), "top_k <= n_experts"),
    (dict(sparsity="moe", capacity_factor=0.0), "capacity_factor must be"),
    (dict(sparsity="moe", moe_eval_mode="greedy"), "moe_eval_mode must be"),
])
def test_bad_moe_configs_raise_clear_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        TransformerConfig(**kw)


def test_moe_configs_round_trip():
    moe = TransformerConfig(n_modalities=3, sparsity="moe", moe_router="token_choice", top_k=2)
    assert moe.n_towers == 1 and moe.untied == frozenset()
    hybrid = TransformerConfig(n_modalities=3, sparsity="mot", moe_towers=[0])
    for cfg in (moe, hybrid):
        assert TransformerConfig(**cfg.to_dict()).to_dict() == cfg.to_dict()
    assert hybrid.ffn_is_moe(0) and not hybrid.ffn_is_moe(1) and moe.ffn_is_moe(2)
    assert hybrid.replace(sparsity="dense").moe_towers is None


def test_unknown_preset_lists_the_available_ones():
    with pytest.raises(ValueError, match="chameleon-7b"):
        TransformerConfig.from_preset("chameleon-8b")


def test_derived_fields():
    cfg = TransformerConfig(dim=256, n_heads=4, n_modalities=3, untie=("ffn", "attn"))
    assert cfg.head_dim == 64 and cfg.n_kv_heads == 4 and cfg.n_towers == 3
    assert cfg.ffn_hidden == 704  # 8/3 * 256 rounded up to a multiple of 64
    assert cfg.towers_for("ffn") == 3 and cfg.towers_for("norm") == 1
    dense = TransformerConfig(n_modalities=3, sparsity="dense")
    assert dense.n_towers == 1 and dense.untied == frozenset() and not dense.is_routed


def test_to_dict_round_trips():
    cfg = TransformerConfig(dim=64, n_heads=4, n_modalities=3, towers=[0, 0, 1], untie=["ffn"])
    again = TransformerConfig(**cfg.to_dict())
    assert again == cfg
    assert cfg.replace(sparsity="dense", towers=None, untie=None).n_towers == 1
