"""An independent, deliberately plain implementation of the paper's Algorithm 1 (MoT layer).

For each modality m: gather its tokens, project with W_Q^m, W_K^m, W_V^m; put
Q, K, V back in sequence order; one causal softmax attention over the whole
sequence; project each modality's slice with W_O^m; then
``h = x + norm^m_attn(O)``, ``out = h + norm^m_ffn(FFN^m(h))`` (Chameleon
norm placement, as in the paper's reference code). QK-norm per modality,
RoPE as complex rotation, plain loops over modalities and heads.
"""
import math

import pytest
import torch

from mot_lightning.model import Transformer, TransformerConfig
from tests.model.helpers import interleaved_modality
from tests.numerics import assert_close, transformer_reduction

EPS = 1e-5


def rms(x, w):
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + EPS) * w


def rope_complex(x, theta=10_000.0):
    """x: (T, hd) -> rotated, pairs (2i, 2i+1) as complex numbers times e^{i t f_i}.

    The frequencies are a table of float32 constants (as the library stores them); the rotation runs in
    ``x``'s dtype.
    """
    T, hd = x.shape
    freqs = (1.0 / theta ** (torch.arange(0, hd, 2).float() / hd)).to(x.dtype)
    angles = torch.outer(torch.arange(T).to(x.dtype), freqs)
    xc = torch.view_as_complex(x.reshape(T, hd // 2, 2).contiguous())
    return torch.view_as_real(xc * torch.polar(torch.ones_like(angles), angles)).reshape(T, hd)


def plain_mot_layer(x, modality, W, n_heads, qk_norm):
    """x: (T, d) one sequence; modality: (T,); W[m]: dict of that modality's weights."""
    T, d = x.shape
    hd = d // n_heads
    Q, K, V = torch.zeros_like(x), torch.zeros_like(x), torch.zeros_like(x)
    for m in modality.unique().tolist():
        idx = (modality == m).nonzero().flatten().tolist()
        Q[idx], K[idx], V[idx] = x[idx] @ W[m]["q"].T, x[idx] @ W[m]["k"].T, x[idx] @ W[m]["v"].T
    heads = []
    for h in range(n_heads):
        sl = slice(h * hd, (h + 1) * hd)
        q, k = Q[:, sl].clone(), K[:, sl].clone()
        if qk_norm:
            for t in range(T):
                m = int(modality[t])
                q[t], k[t] = rms(q[t], W[m]["q_norm"]), rms(k[t], W[m]["k_norm"])
        q, k = rope_complex(q), rope_complex(k)
        scores = q @ k.T / math.sqrt(hd)
        scores = scores.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), float("-inf"))
        heads.append(torch.softmax(scores, dim=-1) @ V[:, sl])
    A = torch.cat(heads, dim=-1)
    out = torch.zeros_like(x)
    for m in modality.unique().tolist():
        idx = (modality == m).nonzero().flatten().tolist()
        h = x[idx] + rms(A[idx] @ W[m]["o"].T, W[m]["attn_norm"])
        gate, up = h @ W[m]["w1"].T, h @ W[m]["w3"].T
        f = (torch.nn.functional.silu(gate) * up) @ W[m]["w2"].T
        out[idx] = h + rms(f, W[m]["ffn_norm"])
    return out


def weights_of(block, m, dim, hidden):
    qkv = block.attn.wqkv.weights[m]
    w13 = block.ffn.w13.weights[m]
    return {
        "q": qkv[:dim], "k": qkv[dim:2 * dim], "v": qkv[2 * dim:],
        "o": block.attn.wo.weights[m],
        "w1": w13[:hidden], "w3": w13[hidden:], "w2": block.ffn.w2.weights[m],
        "q_norm": block.attn.q_norm.weights[m], "k_norm": block.attn.k_norm.weights[m],
        "attn_norm": block.attn_norm.weights[m], "ffn_norm": block.ffn_norm.weights[m],
    }


@pytest.mark.parametrize("n_modalities", [2, 3])
def test_library_block_matches_plain_algorithm_1(n_modalities):
    """Parity with a reference algorithm is algebra: both run in float64 and agree to ~1e-13."""
    cfg = TransformerConfig(dim=32, n_layers=1, n_heads=4, n_modalities=n_modalities,
                            norm_layout="post_sublayer", qk_norm=True)
    model = Transformer(cfg)
    with torch.no_grad():  # random norm weights so untied norms matter too
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.3 * torch.randn_like(p))
    model.double()
    block = model.layers[0]
    B, T = 2, 19
    x, modality = torch.randn(B, T, 32, dtype=torch.float64), interleaved_modality(B, T, n_modalities, seed=2)
    with torch.no_grad():
        lib = model(x, modality)  # one layer + the untied final norm
        W = {m: weights_of(block, m, 32, cfg.ffn_hidden) for m in range(n_modalities)}
        final = model.norm.weights
        for b in range(B):
            ref = plain_mot_layer(x[b], modality[b], W, cfg.n_heads, qk_norm=True)
            ref = torch.stack([rms(ref[t], final[int(modality[b, t])]) for t in range(T)])
            assert_close(lib[b], ref, reduction=transformer_reduction(1, 32, cfg.ffn_hidden, T))
