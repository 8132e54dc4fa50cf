"""Fast paths against their obviously-correct twins: MoT vs dense, towers, backends.

These are algebra (two ways to compute the same function), so both sides run in float64 and agree to
``tests.numerics`` tolerances of ~1e-13: a wrong tower, weight or mask shows even if it moved results by
far less than float32 could resolve.
"""
import pytest
import torch

from mot_lightning.model import Transformer, TransformerConfig
from tests.model.helpers import copy_dense_into_towers, interleaved_modality, params_by_slot
from tests.numerics import assert_close, transformer_reduction

B, T = 2, 24
F64 = torch.float64
REDUCTION = transformer_reduction(n_layers=2, dim=32, ffn_hidden=128, seq_len=T)


def _tiny(**kw) -> TransformerConfig:
    return TransformerConfig(**{"dim": 32, "n_layers": 2, "n_heads": 4, **kw})


def _inputs(n_modalities: int) -> tuple[torch.Tensor, torch.Tensor]:
    """float64[B, T, 32] activations and long[B, T] interleaved modalities."""
    return torch.randn(B, T, 32, dtype=F64), interleaved_modality(B, T, n_modalities)


@pytest.mark.parametrize("norm_layout", ["pre", "post_sublayer"])
@pytest.mark.parametrize("untie", [None, ("ffn",), ("ffn", "attn")])
def test_mot_with_identical_towers_equals_dense(norm_layout, untie):
    dense = Transformer(_tiny(sparsity="dense", n_modalities=3, norm_layout=norm_layout)).double()
    mot = Transformer(_tiny(sparsity="mot", n_modalities=3, norm_layout=norm_layout, untie=untie)).double()
    copy_dense_into_towers(dense, mot)
    x, modality = _inputs(3)
    assert_close(mot(x, modality), dense(x, modality), reduction=REDUCTION)


def test_mot_with_one_modality_equals_dense():
    torch.manual_seed(1)
    dense = Transformer(_tiny(sparsity="dense", n_modalities=1))
    torch.manual_seed(1)
    mot = Transformer(_tiny(sparsity="mot", n_modalities=1))
    x, modality = torch.randn(B, T, 32), torch.zeros(B, T, dtype=torch.long)
    # one tower is no routing at all: the very same kernels on the same shapes, so bitwise equal
    assert torch.equal(mot(x, modality), dense(x, modality))


def test_copy_init_starts_as_the_dense_model():
    """tower_init='copy' draws tower 0 from the same RNG stream the dense model uses."""
    torch.manual_seed(3)
    dense = Transformer(_tiny(sparsity="dense", n_modalities=3)).double()
    torch.manual_seed(3)
    mot = Transformer(_tiny(sparsity="mot", n_modalities=3, tower_init="copy")).double()
    x, modality = _inputs(3)
    assert_close(mot(x, modality), dense(x, modality), reduction=REDUCTION)
    independent = Transformer(_tiny(sparsity="mot", n_modalities=3))
    assert not torch.allclose(independent.layers[0].ffn.w2.weights[0], independent.layers[0].ffn.w2.weights[1])


def test_shared_tower_map_equals_mot_with_copied_tower():
    """towers=[0, 0, 1] (text+image share) == 3-tower MoT whose image tower is the text tower."""
    grouped = Transformer(_tiny(n_modalities=3, towers=[0, 0, 1])).double()
    full = Transformer(_tiny(n_modalities=3)).double()
    grouped_slots = params_by_slot(grouped)
    with torch.no_grad():
        for slot, towers in params_by_slot(full).items():
            for f, k in zip(towers, [0, 0, 1]):
                f.copy_(grouped_slots[slot][k])
    x, modality = _inputs(3)
    assert_close(grouped(x, modality), full(x, modality), reduction=REDUCTION)


def test_gqa_with_repeated_kv_heads_equals_full_heads():
    gqa = Transformer(_tiny(n_modalities=2, n_kv_heads=2, qk_norm=False)).double()
    mha = Transformer(_tiny(n_modalities=2, n_kv_heads=4, qk_norm=False)).double()
    hd = 8
    with torch.no_grad():
        for (name, g), (_, f) in zip(gqa.named_parameters(), mha.named_parameters()):
            if ".wqkv.weights." in name:  # (out, in) of one tower
                q, k, v = g.split([4 * hd, 2 * hd, 2 * hd], dim=0)
                rep = lambda w: w.unflatten(0, (2, hd)).repeat_interleave(2, dim=0).flatten(0, 1)  # noqa: E731
                f.copy_(torch.cat([q, rep(k), rep(v)], dim=0))
            else:
                f.copy_(g)
    x, modality = _inputs(2)
    assert_close(gqa(x, modality), mha(x, modality), reduction=REDUCTION)


def test_mot_with_identical_towers_equals_dense_with_qkv_bias_and_wide_heads():
    """Q/K/V biases (Qwen2) and a head width apart from dim / n_heads (Qwen3): still dense with copied towers;
    a tower's bias moves only its own tokens."""
    kw = dict(n_modalities=3, qkv_bias=True, attn_head_dim=16, n_kv_heads=2)
    dense = Transformer(_tiny(sparsity="dense", **kw)).double()
    mot = Transformer(_tiny(sparsity="mot", **kw)).double()
    with torch.no_grad():
        for layer in dense.layers:
            layer.attn.qkv_bias.weights[0].normal_()
    copy_dense_into_towers(dense, mot)
    x, modality = _inputs(3)
    assert_close(mot(x, modality), dense(x, modality), reduction=REDUCTION)
    text = torch.zeros_like(modality)
    before = mot(x, text)
    with torch.no_grad():
        mot.layers[0].attn.qkv_bias.weights[1].add_(1.0)  # the image tower's bias
    assert torch.equal(mot(x, text), before)


@pytest.mark.parametrize("with_spans", [False, True])
def test_flex_backend_equals_sdpa_forward(with_spans):
    """Same ids -> same mask under FlexAttention (eager, forward-only on CPU) and SDPA."""
    sdpa = Transformer(_tiny(n_modalities=3, attn_backend="sdpa")).double()
    flex = Transformer(_tiny(n_modalities=3, attn_backend="flex")).double()
    flex.load_state_dict(sdpa.state_dict())
    x, modality = _inputs(3)
    doc_ids = torch.tensor([[0] * 10 + [1] * 14, [0] * 5 + [1] * 15 + [2] * 4])
    span_ids = None
    if with_spans:
        span_ids = torch.full((B, T), -1)
        span_ids[0, 12:20] = 0
        span_ids[1, 2:5] = 0
    kw = dict(doc_ids=doc_ids, span_ids=span_ids)
    with torch.no_grad():
        assert_close(flex(x, modality, **kw), sdpa(x, modality, **kw), reduction=REDUCTION)


@pytest.mark.parametrize("norm_layout", ["pre", "post_sublayer"])
def test_identical_towers_backward_equals_dense(norm_layout):
    """Input gradients match, and each dense weight gradient is the sum of its towers' gradients.

    The output gradient is a fixed random tensor: ``out.pow(2).sum()`` would be nearly constant after the
    final RMSNorm, so its input gradient is a small remainder of cancelling terms (rounding noise).
    """
    dense = Transformer(_tiny(sparsity="dense", n_modalities=3, norm_layout=norm_layout)).double()
    mot = Transformer(_tiny(sparsity="mot", n_modalities=3, norm_layout=norm_layout)).double()
    copy_dense_into_towers(dense, mot)
    x, modality = _inputs(3)
    grad_out = torch.randn(B, T, 32, dtype=F64)
    grads = []
    for model in (dense, mot):
        xg = x.clone().requires_grad_(True)
        model(xg, modality).backward(grad_out)
        grads.append(xg.grad)
    assert_close(grads[1], grads[0], reduction=REDUCTION)
    mot_slots = params_by_slot(mot)
    for slot, (p,) in params_by_slot(dense).items():  # a weight gradient also sums over the B*T tokens
        tower_sum = torch.stack([t.grad for t in mot_slots[slot]]).sum(0)
        assert_close(tower_sum, p.grad, reduction=REDUCTION + B * T, msg=slot)
