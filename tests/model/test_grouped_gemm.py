"""``grouped_gemm: grouped_mm`` (one torch._grouped_mm for all towers) against its twin, the per-tower loop,
on CPU where torch 2.11 runs it in float32 and bf16 (forward and backward)."""
import pytest
import torch

from mot_lightning.model import Transformer, TransformerConfig
from mot_lightning.model.untied import Routing, UntiedLinear
from tests.model.helpers import interleaved_modality, weight_grads
from tests.numerics import assert_close, transformer_reduction


@pytest.mark.parametrize("counts", [(7, 0, 13), (0, 0, 20), (1, 18, 1)],
                         ids=["empty-middle", "one-tower", "ones"])
def test_grouped_mm_equals_loop_forward_and_backward(counts):
    layer = UntiedLinear(16, 24, n_weights=3)
    x = torch.randn(sum(counts), 16)
    results = []
    for gemm in ("loop", "grouped_mm"):
        layer.zero_grad(set_to_none=True)
        xg = x.clone().requires_grad_(True)
        out = layer(xg, Routing(counts=counts, gemm=gemm))
        out.pow(2).sum().backward()
        results.append((out.detach(), xg.grad, weight_grads(layer)))
    for loop, grouped in zip(*results):  # outputs, input and weight gradients: sums over <= N terms
        assert_close(grouped, loop, reduction=sum(counts))
    for k, c in enumerate(counts):
        if c == 0:
            assert torch.all(results[1][2][k] == 0)


def test_backbone_with_grouped_mm_equals_the_loop_backbone():
    cfg = TransformerConfig(dim=32, n_layers=2, n_heads=4, n_modalities=3, attn_backend="sdpa")
    loop = Transformer(cfg)
    grouped = Transformer(cfg.replace(grouped_gemm="grouped_mm"))
    grouped.load_state_dict(loop.state_dict())
    modality = interleaved_modality(2, 40, 3)
    modality[1][modality[1] == 2] = 0
    x = torch.randn(2, 40, 32)
    outs = []
    for model in (loop, grouped):
        xg = x.clone().requires_grad_(True)
        out = model(xg, modality)
        out.pow(2).mean().backward()
        outs.append((out.detach(), xg.grad))
    for a, b in zip(*outs):
        assert_close(b, a, reduction=transformer_reduction(cfg.n_layers, cfg.dim, cfg.ffn_hidden, 40))


def test_auto_picks_the_loop_off_cuda():
    model = Transformer(TransformerConfig(dim=32, n_layers=1, n_heads=4, n_modalities=2, grouped_gemm="auto"))
    for dtype in (torch.float32, torch.bfloat16):
        assert model.gemm_kernel(torch.device("cpu"), dtype) == "loop"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model.gemm_kernel(torch.device("cpu"), torch.float32) == "loop"


def test_unknown_kernel_is_named():
    with pytest.raises(ValueError, match="grouped_gemm"):
        TransformerConfig(grouped_gemm="cutlass")
