"""bf16 autocast on CPU (what ``trainer.precision: bf16-mixed`` runs): every matmul of the untied layers,
attention and MoE runs in bf16 as ``F.linear`` would, the residual stream and the gradients stay float32,
and a training step's loss and gradients stay within bf16 rounding of the float32 step."""
import pytest
import torch
import torch.nn.functional as F

from mot_lightning.model import TransformerConfig
from mot_lightning.model.attention import Attention
from mot_lightning.model.lm import TokenLM
from mot_lightning.model.moe import MoEFeedForward
from mot_lightning.model.untied import Routing, UntiedLinear, UntiedRMSNorm
from tests.model.helpers import interleaved_modality

BF16_EPS = torch.finfo(torch.bfloat16).eps  # 2^-7: one bf16 rounding step relative to 1
B, T, VOCAB = 2, 64, 64

VARIANTS = {
    "dense": {"sparsity": "dense"},
    "mot": {},
    "mot_post_sublayer": {"norm_layout": "post_sublayer"},
    "mot_grouped_mm": {"grouped_gemm": "grouped_mm"},
    "moe4x_expert_choice": {"sparsity": "moe"},
    "moe4x_token_choice": {"sparsity": "moe", "moe_router": "token_choice"},
    "hybrid_text_moe": {"moe_towers": [0]},
}


def _lm(**kw) -> TokenLM:
    cfg = TransformerConfig(**{"dim": 32, "n_layers": 2, "n_heads": 4, "n_modalities": 3,
                               "attn_backend": "sdpa", **kw})
    return TokenLM(cfg, VOCAB)


def _batch():
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, VOCAB, (B, T), generator=g)
    targets = torch.randint(0, VOCAB, (B, T), generator=g)
    doc_ids = (torch.arange(T) >= 40).long().expand(B, T)  # two packed documents: the dense-mask SDPA path
    return tokens, interleaved_modality(B, T, 3), doc_ids, targets


def _step(lm: TokenLM, bf16: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
    tokens, modality, doc_ids, targets = _batch()
    lm.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        logits = lm(tokens, modality, doc_ids=doc_ids)
        loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
    loss.backward()
    return loss.detach(), [p.grad for p in lm.parameters()]


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_bf16_step_is_within_bf16_rounding_of_fp32(variant):
    torch.manual_seed(0)
    lm = _lm(**VARIANTS[variant])
    loss32, grads32 = _step(lm, bf16=False)
    loss16, grads16 = _step(lm, bf16=True)
    assert torch.isfinite(loss16) and all(torch.isfinite(g).all() for g in grads16)
    assert all(g.dtype == torch.float32 for g in grads16)  # master weights and their gradients stay float32
    # the loss (a mean over B*T tokens) moves by less than one bf16 rounding of its value
    assert abs(float(loss16 - loss32)) <= BF16_EPS * float(loss32)
    # every gradient entry carries a few bf16 roundings; over all parameters they stay within 2 of them
    flat32, flat16 = torch.cat([g.flatten() for g in grads32]), torch.cat([g.flatten() for g in grads16])
    assert float((flat16 - flat32).norm() / flat32.norm()) <= 2 * BF16_EPS
    assert not torch.equal(flat16, flat32)  # autocast really ran something in bf16


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_dtypes_under_autocast_match_what_f_linear_gives(variant):
    """Matmul outputs (untied or not, attention, MoE) are bf16 like F.linear's; norms keep their input's
    dtype; the residual stream leaving the backbone is float32."""
    torch.manual_seed(0)
    lm = _lm(**VARIANTS[variant])
    seen: dict[str, set] = {"linear": set(), "attention": set(), "moe": set(), "norm_mismatch": set()}

    def record(kind):
        def hook(module, args, out):
            if kind == "norm":
                if out.dtype != args[0].dtype:
                    seen["norm_mismatch"].add((args[0].dtype, out.dtype))
            else:
                seen[kind].add(out.dtype)
        return hook

    for module in lm.modules():
        kind = {UntiedLinear: "linear", Attention: "attention", MoEFeedForward: "moe",
                UntiedRMSNorm: "norm"}.get(type(module))
        if kind:
            module.register_forward_hook(record(kind))
    backbone_out = []
    lm.backbone.register_forward_hook(lambda m, a, out: backbone_out.append(out.dtype))
    tokens, modality, doc_ids, _ = _batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = lm(tokens, modality, doc_ids=doc_ids)
        reference = F.linear(torch.randn(2, 32), torch.randn(3, 32)).dtype
    assert reference == torch.bfloat16
    assert seen["linear"] == {reference} and seen["attention"] == {reference}
    if "moe" in variant:
        assert seen["moe"] == {reference}
    assert not seen["norm_mismatch"]
    assert backbone_out == [torch.float32] and logits.dtype == reference


@pytest.mark.parametrize("gemm", ["loop", "grouped_mm"])
def test_untied_linear_under_autocast_equals_per_tower_f_linear(gemm):
    """forward (one kernel for all towers) vs the per-tower F.linear twin, both under autocast: same dtype,
    values within one bf16 rounding; gradients reach the float32 weights."""
    layer = UntiedLinear(32, 48, n_weights=3)
    x = torch.randn(50, 32, requires_grad=True)
    counts = (20, 0, 30)
    routing = Routing(counts=counts, gemm=gemm)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, ref = layer(x, routing), layer.reference(x, routing)
    assert out.dtype == ref.dtype == torch.bfloat16
    scale = float(ref.detach().abs().max())
    torch.testing.assert_close(out.float(), ref.float(), atol=BF16_EPS * scale, rtol=0)
    out.float().sum().backward()
    assert all(w.grad.dtype == torch.float32 for w in layer.weights) and x.grad.dtype == torch.float32
    assert torch.all(layer.weights[1].grad == 0)  # the empty tower still gets a (zero) gradient
