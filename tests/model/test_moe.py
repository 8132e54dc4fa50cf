"""MoE-4x and hybrid MoT+MoE: routing properties, agreement with dense/MoT twins, causality, accounting."""
import math

import pytest
import torch
from torch.testing import assert_close

from mot_lightning.model import Transformer, TransformerConfig, backbone_stats
from mot_lightning.model import moe as moe_module
from mot_lightning.model.accounting import count_parameters
from mot_lightning.model.feedforward import FeedForward, HybridFeedForward
from mot_lightning.model.moe import Dispatch, MoEFeedForward, expert_choice, token_choice
from mot_lightning.model.untied import Routing
from tests.model.helpers import interleaved_modality
from tests.numerics import assert_close as assert_agree
from tests.numerics import changed, transformer_reduction

D = 32
FFN = D + 128  # reduction of one SwiGLU FFN: dim in, ffn_hidden out


def tiny(**kw) -> TransformerConfig:
    return TransformerConfig(**{**dict(dim=D, n_layers=2, n_heads=4, n_modalities=3), **kw})


def capture_expert_counts(moe: MoEFeedForward) -> list:
    """Record the per-expert token counts of every forward (the split sizes of the expert matmul)."""
    seen = []
    moe.w13.register_forward_hook(lambda mod, args, out: seen.append(args[1].counts))
    return seen


# ------------------------------------------------------------------ expert choice
@pytest.mark.parametrize("n_tokens,cf", [(32, 1.0), (30, 1.0), (30, 0.5), (30, 2.0)])
def test_expert_choice_each_expert_processes_exactly_its_capacity(n_tokens, cf):
    torch.manual_seed(0)
    moe = MoEFeedForward(tiny(sparsity="moe", capacity_factor=cf))
    seen = capture_expert_counts(moe)
    moe(torch.randn(n_tokens, D))
    capacity = math.ceil(cf * n_tokens / 4)
    assert seen == [(capacity,) * 4]
    assert_close(moe.last_stats.load, torch.full((4,), 0.25))


def test_expert_choice_picks_each_experts_top_tokens():
    torch.manual_seed(0)
    probs = torch.randn(20, 4).softmax(-1)
    d = expert_choice(probs, 5)
    for e, tokens in enumerate(d.tokens.split(d.counts)):
        assert set(tokens.tolist()) == set(probs[:, e].argsort(descending=True)[:5].tolist())
        assert_close(d.gates.split(d.counts)[e], probs[tokens, e])


@pytest.mark.parametrize("router", ["expert_choice", "token_choice"])
def test_one_expert_at_capacity_one_equals_the_dense_ffn(router):
    """Softmax over one expert gives gate exactly 1, and capacity N keeps every token."""
    torch.manual_seed(0)
    moe = MoEFeedForward(tiny(sparsity="moe", n_experts=1, moe_router=router)).double()
    dense = FeedForward(tiny(sparsity="dense")).double()
    with torch.no_grad():
        moe.w13.weights[0].copy_(dense.w13.weights[0])
        moe.w2.weights[0].copy_(dense.w2.weights[0])
    x = torch.randn(24, D, dtype=torch.float64)
    assert_agree(moe(x), dense(x, Routing(counts=(24,))), reduction=FFN)
    assert moe.last_stats.dropped == 0


# ------------------------------------------------------------------ token choice
def test_token_choice_capacity_drops_overflow_in_token_order():
    torch.manual_seed(0)
    moe = MoEFeedForward(tiny(sparsity="moe", moe_router="token_choice", capacity_factor=1.0))
    with torch.no_grad():
        moe.router.zero_()
        moe.router[0, 0] = 10.0  # every token with x[:, 0] > 0 wants expert 0
    x = torch.randn(40, D)
    x[:, 0] = 1.0
    seen = capture_expert_counts(moe)
    out = moe(x)
    assert seen[0][0] == 10  # capacity ceil(40 / 4); the other 30 assignments are dropped
    assert moe.last_stats.dropped.item() == pytest.approx(30 / 40)
    assert (out[10:] == 0).all() and (out[:10] != 0).any()  # first come, first served


def test_token_choice_aux_loss_balances_a_skewed_router():
    torch.manual_seed(0)
    moe = MoEFeedForward(tiny(sparsity="moe", moe_router="token_choice"))
    x = torch.randn(256, D) + 1.0  # skewed input: a large component shared by every token
    with torch.no_grad():
        moe.router[0] += 0.05  # ... that the router maps to expert 0
    opt = torch.optim.Adam([moe.router], lr=3e-3)
    loads = []
    for _ in range(100):
        opt.zero_grad()
        moe(x)
        loads.append(moe.last_stats.load.max().item())
        moe.last_aux_loss.backward()  # only the load-balancing loss trains the router
        opt.step()
    assert loads[0] == 1.0  # every token asks for expert 0
    # 1/E = 0.25. The mean over the last steps, not their max: a step's load moves by a token or two as the
    # router oscillates (means 0.261..0.272 over seeds 0-11, single steps up to 0.293); unbalanced stays at 1
    assert sum(loads[-10:]) / 10 < 0.3, loads[-10:]
    assert moe.last_stats.aux_loss.item() < 1.05  # 1.0 is perfect balance


def test_transformer_aux_loss_sums_layers_with_the_coefficient():
    torch.manual_seed(0)
    x, mod = torch.randn(2, 12, D), interleaved_modality(2, 12, 3)
    for kw in (dict(sparsity="dense"), dict(sparsity="mot"), dict(sparsity="moe")):
        model = Transformer(tiny(**kw))
        model(x, mod)
        assert model.aux_loss().item() == 0.0
    model = Transformer(tiny(sparsity="moe", moe_router="token_choice", aux_loss_coef=0.5))
    model(x, mod)
    layers = [m.ffn.last_aux_loss for m in model.layers]
    assert_close(model.aux_loss(), 0.5 * (layers[0] + layers[1]))
    assert model.aux_loss().requires_grad
    assert sorted(model.moe_stats()) == ["layers.0.ffn", "layers.1.ffn"]


# ------------------------------------------------------------------ causality
# weights at the scale of a trained model (not the 0.02 init): an expert's output is then O(1) against the
# residual, so routing one token differently moves outputs thousands of times the rounding tolerance
TRAINED_STD = D ** -0.5


def _future_changes_past(model: Transformer, t: int) -> bool:
    """Do positions <= t move by more than float32 rounding when every later position changes?

    Not ``torch.equal``: changing later tokens changes how many tokens each expert gets, hence the
    matmul shapes and their summation order, so a causal router still moves earlier outputs by ~1e-9.
    """
    torch.manual_seed(1)
    x, mod = torch.randn(1, 16, D), interleaved_modality(1, 16, 3)
    y = model(x, mod)
    x2 = x.clone()
    x2[:, t + 1:] += 3 * torch.randn_like(x2[:, t + 1:])
    reduction = transformer_reduction(n_layers=2, dim=D, ffn_hidden=128, seq_len=16)
    return changed(model(x2, mod)[:, : t + 1], y[:, : t + 1], reduction=reduction)


@torch.no_grad()
def test_expert_choice_looks_ahead_and_causal_eval_mode_does_not():
    torch.manual_seed(0)
    batch_mode = Transformer(tiny(sparsity="moe", init_std=TRAINED_STD)).eval()
    assert _future_changes_past(batch_mode, 7)  # the paper's caveat, made visible
    torch.manual_seed(0)
    causal = Transformer(tiny(sparsity="moe", moe_eval_mode="causal", init_std=TRAINED_STD)).eval()
    for t in (0, 7, 14):
        assert not _future_changes_past(causal, t)


@torch.no_grad()
def test_token_choice_is_causal_in_training():
    torch.manual_seed(0)
    model = Transformer(tiny(sparsity="moe", moe_router="token_choice", capacity_factor=1.0,
                             init_std=TRAINED_STD)).train()
    for t in (0, 7, 14):
        assert not _future_changes_past(model, t)


def _priority_token_choice(probs: torch.Tensor, top_k: int, capacity: int) -> tuple[Dispatch, torch.Tensor]:
    """The bug: capacity is granted to the most confident tokens first ("batch prioritized routing")
    instead of in token order, so a later confident token can push an earlier one out of its expert."""
    order = probs.max(-1).values.argsort(descending=True)  # (N,) most confident first
    d, assigned = token_choice(probs[order], top_k, capacity)
    return Dispatch(tokens=order[d.tokens], gates=d.gates, counts=d.counts), assigned


@torch.no_grad()
def test_token_choice_causality_check_catches_priority_routing(monkeypatch):
    monkeypatch.setattr(moe_module, "token_choice", _priority_token_choice)
    torch.manual_seed(0)
    model = Transformer(tiny(sparsity="moe", moe_router="token_choice", capacity_factor=1.0,
                             init_std=TRAINED_STD)).train()
    assert any(_future_changes_past(model, t) for t in (0, 7, 14))


# ------------------------------------------------------------------ hybrid MoT + MoE
def _hybrid_and_mot(**kw):
    torch.manual_seed(0)
    hybrid = Transformer(tiny(sparsity="mot", moe_towers=[0], **kw))
    mot = Transformer(tiny(sparsity="mot", **kw))
    ffn_names = {n for n, _ in hybrid.named_parameters() if ".ffn." in n}
    mot_params = dict(mot.named_parameters())
    with torch.no_grad():
        for name, p in hybrid.named_parameters():
            if name not in ffn_names:
                p.copy_(mot_params[name])
        for h, m in zip(hybrid.layers, mot.layers):
            for i, k in enumerate(h.ffn.plain_towers):  # plain weight i is tower k
                h.ffn.plain.w13.weights[i].copy_(m.ffn.w13.weights[k])
                h.ffn.plain.w2.weights[i].copy_(m.ffn.w2.weights[k])
    return hybrid.double(), mot.double()  # equivalence: algebra, so float64


@pytest.mark.parametrize("kw", [dict(), dict(towers=[0, 1, 1])])
def test_hybrid_non_moe_towers_equal_plain_mot_towers(kw):
    hybrid, mot = _hybrid_and_mot(**kw)
    cfg = hybrid.cfg
    mod = interleaved_modality(2, 24, 3)
    routing = Routing.build(mod, list(cfg.towers), cfg.n_towers)
    x = torch.randn(48, D, dtype=torch.float64)
    y_h = routing.split(hybrid.layers[0].ffn(x, routing))
    y_m = routing.split(mot.layers[0].ffn(x, routing))
    for k in hybrid.layers[0].ffn.plain_towers:  # one FFN call on a mixed batch
        assert_agree(y_h[k], y_m[k], reduction=FFN)
    no_text = mod.clamp(min=1)  # a batch without the MoE tower's modality: the whole model agrees
    x = torch.randn(2, 24, D, dtype=torch.float64)
    assert_agree(hybrid(x, no_text), mot(x, no_text), reduction=transformer_reduction(2, D, 128, 24))


def test_hybrid_moe_tower_routes_only_its_own_tokens():
    torch.manual_seed(0)
    cfg = tiny(sparsity="mot", moe_towers=[0])
    ffn = HybridFeedForward(cfg)
    seen = capture_expert_counts(ffn.moe[0])
    mod = interleaved_modality(2, 24, 3)
    routing = Routing.build(mod, list(cfg.towers), cfg.n_towers)
    n_text = routing.counts[0]
    x = torch.randn(48, D)
    y = ffn(x, routing)
    picked = ffn.moe[0].last_stats
    x2 = x.clone()
    x2[n_text:] = torch.randn_like(x2[n_text:])  # change every image and speech token
    y2 = ffn(x2, routing)
    assert sum(seen[0]) == 4 * math.ceil(n_text / 4)  # expert choice over text tokens only
    assert torch.equal(y[:n_text], y2[:n_text])  # the MoE tower sees the same inputs and shapes: bitwise
    assert torch.equal(picked.load, ffn.moe[0].last_stats.load)
    assert torch.equal(picked.dropped, ffn.moe[0].last_stats.dropped)


def test_hybrid_without_its_moe_modality_still_gives_every_parameter_a_gradient():
    """DDP never sees an unused parameter: the empty MoE tower still runs (gradient exactly zero)."""
    torch.manual_seed(0)
    model = Transformer(tiny(sparsity="mot", moe_towers=[0]))
    model(torch.randn(1, 12, D), torch.full((1, 12), 2)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    assert all(w.grad.abs().sum() == 0 for w in model.layers[0].ffn.moe[0].w13.weights)


# ------------------------------------------------------------------ accounting
@pytest.mark.parametrize("kw", [
    dict(sparsity="moe"),
    dict(sparsity="moe", moe_router="token_choice", top_k=2, n_experts=3),
    dict(sparsity="mot", moe_towers=[0]),
    dict(sparsity="mot", towers=[0, 1, 1], moe_towers=[1], untie=("ffn", "attn")),
])
def test_moe_total_params_match_the_module(kw):
    cfg = tiny(**kw)
    assert backbone_stats(cfg, 12).total_params == count_parameters(Transformer(cfg))


def test_moe_active_params_are_one_expert_plus_router():
    dense = backbone_stats(tiny(sparsity="dense"), 12)
    router = 2 * D * 4
    assert backbone_stats(tiny(sparsity="moe"), 12).active_params == {m: dense.active_params[m] + router
                                                                        for m in range(3)}
    hybrid = backbone_stats(tiny(sparsity="mot", moe_towers=[0]), 12)
    assert hybrid.active_params == {0: dense.active_params[0] + router, 1: dense.active_params[1],
                                    2: dense.active_params[2]}


@pytest.mark.parametrize("preset", ["tiny", "chameleon-443m", "chameleon-7b"])
def test_dense_mot_and_moe4x_have_equal_training_flops_per_token(preset):
    """Equal in everything except the MoE router, whose term is asserted on its own."""
    def stats(**kw):
        cfg = TransformerConfig.from_preset(preset, n_modalities=3, **kw)
        return cfg, backbone_stats(cfg, 4096, vocab_size=65536)

    _, dense = stats(sparsity="dense")
    _, mot = stats(sparsity="mot")
    cfg, moe = stats(sparsity="moe")  # 4 experts, expert choice, capacity factor 1
    _, token = stats(sparsity="moe", moe_router="token_choice", top_k=1)
    _, hybrid = stats(sparsity="mot", moe_towers=[0])
    router = 3.0 * 2 * cfg.n_layers * cfg.dim * 4
    assert mot.flops_per_token == dense.flops_per_token
    for s in (moe, token):
        assert s.router_flops_per_token == {m: router for m in range(3)}
        assert {m: f - router for m, f in s.flops_per_token.items()} == dense.flops_per_token
    assert hybrid.router_flops_per_token == {0: router, 1: 0.0, 2: 0.0}
    assert hybrid.flops_per_token[0] - router == dense.flops_per_token[0]
    assert hybrid.flops_per_token[1] == dense.flops_per_token[1]
    assert router / dense.flops_per_token[0] < 2e-3
