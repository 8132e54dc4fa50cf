"""CUDA-only paths (skipped without a GPU): compiled FlexAttention, compiled blocks, grouped_mm, bf16."""
import pytest
import torch

from mot_lightning.model import Transformer, TransformerConfig
from tests.model.helpers import interleaved_modality

pytestmark = pytest.mark.gpu


def test_flex_on_cuda_matches_sdpa_forward_and_backward():
    cfg = TransformerConfig(dim=64, n_layers=2, n_heads=4, n_modalities=3)
    sdpa = Transformer(cfg.replace(attn_backend="sdpa")).cuda()
    flex = Transformer(cfg.replace(attn_backend="flex")).cuda()
    flex.load_state_dict(sdpa.state_dict())
    B, T = 2, 256
    modality = interleaved_modality(B, T, 3).cuda()
    doc_ids = (torch.arange(T) >= 100).long().expand(B, T).cuda()
    span_ids = torch.full((B, T), -1, device="cuda")
    span_ids[:, 120:180] = 0
    x = torch.randn(B, T, 64, device="cuda")
    outs, grads = [], []
    for model in (sdpa, flex):
        xg = x.clone().requires_grad_(True)
        out = model(xg, modality, doc_ids=doc_ids, span_ids=span_ids)
        out.pow(2).sum().backward()
        outs.append(out)
        grads.append(xg.grad)
    torch.testing.assert_close(outs[1], outs[0], atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(grads[1], grads[0], atol=2e-3, rtol=2e-3)


def test_bf16_autocast_mot_close_to_fp32():
    cfg = TransformerConfig(dim=64, n_layers=2, n_heads=4, n_modalities=3, attn_backend="sdpa")
    model = Transformer(cfg).cuda()
    x, modality = torch.randn(2, 128, 64, device="cuda"), interleaved_modality(2, 128, 3).cuda()
    ref = model(x, modality)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(x, modality)
    torch.testing.assert_close(out.float(), ref, atol=5e-2, rtol=5e-2)


BF16_EPS = torch.finfo(torch.bfloat16).eps


def test_grouped_mm_equals_loop_on_cuda_in_bf16():
    """The two kernels of UntiedLinear (``grouped_gemm``), forward and backward, with an empty tower."""
    from mot_lightning.model.untied import Routing, UntiedLinear

    layer = UntiedLinear(256, 512, n_weights=3).cuda()
    counts = (1000, 0, 3000)
    x = torch.randn(sum(counts), 256, device="cuda")
    results = []
    for gemm in ("loop", "grouped_mm"):
        layer.zero_grad(set_to_none=True)
        xg = x.clone().requires_grad_(True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = layer(xg, Routing(counts=counts, gemm=gemm))
        assert out.dtype == torch.bfloat16
        out.float().pow(2).mean().backward()
        results.append((out.float(), xg.grad, torch.stack([w.grad for w in layer.weights])))
    for loop, grouped in zip(*results):
        torch.testing.assert_close(grouped, loop, atol=2 * BF16_EPS * float(loop.abs().max()), rtol=0)
    assert torch.all(results[1][2][1] == 0)


def test_auto_picks_grouped_mm_on_hopper_in_bf16():
    model = Transformer(TransformerConfig(dim=64, n_layers=1, n_heads=4, n_modalities=2, grouped_gemm="auto"))
    device = torch.device("cuda")
    hopper = torch.cuda.get_device_capability() >= (9, 0)
    assert model.gemm_kernel(device, torch.bfloat16) == ("grouped_mm" if hopper else "loop")
    assert model.gemm_kernel(device, torch.float32) == "loop"
    with torch.autocast("cuda", dtype=torch.bfloat16):
        assert model.gemm_kernel(device, torch.float32) == ("grouped_mm" if hopper else "loop")


@pytest.mark.parametrize("gemm", ["loop", "grouped_mm"])
def test_compiled_blocks_with_flex_on_cuda_match_eager_and_compile_once(gemm):
    """compile_blocks + FlexAttention block masks + bf16 autocast on CUDA: equal to eager within bf16
    rounding, forward and backward, one compilation for batches with other tower sizes."""
    import copy

    from torch._dynamo.testing import CompileCounterWithBackend

    if gemm == "grouped_mm" and torch.cuda.get_device_capability() < (9, 0):
        pytest.skip("torch._grouped_mm needs sm90+")
    torch._dynamo.reset()
    cfg = TransformerConfig(dim=128, n_layers=2, n_heads=4, n_modalities=3, grouped_gemm=gemm)
    eager = Transformer(cfg).cuda()
    compiled = copy.deepcopy(eager)
    counter = CompileCounterWithBackend("inductor")
    compiled.compile_blocks(backend=counter)
    B, T = 2, 512
    doc_ids = (torch.arange(T) >= 300).long().expand(B, T).cuda()
    for seed in range(6):
        modality = interleaved_modality(B, T, 3, seed=seed).cuda()
        if seed == 3:
            modality[modality == 2] = 0  # no speech: an empty tower
        x = torch.randn(B, T, 128, device="cuda")
        outs = []
        for model in (eager, compiled):
            xg = x.clone().requires_grad_(True)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                out = model(xg, modality, doc_ids=doc_ids)
            out.float().pow(2).mean().backward()
            outs.append((out.float(), xg.grad))
        for want, got in zip(*outs):
            torch.testing.assert_close(got, want, atol=4 * BF16_EPS * float(want.abs().max()), rtol=0)
    assert counter.frame_count == 1
