"""CUDA-only paths: compiled FlexAttention forward+backward and bf16 grouped matmuls (skipped without a GPU)."""
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
