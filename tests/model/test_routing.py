"""Routed untied layers agree with a per-token loop; routing is a permutation."""
import pytest
import torch

from mot_lightning.model.untied import Routing, UntiedLinear, UntiedRMSNorm
from tests.model.helpers import interleaved_modality, weight_grads
from tests.numerics import assert_close

F64 = torch.float64  # fast path vs per-token loop is algebra: compared in float64


def test_routing_sorts_by_tower_and_inverts():
    modality = interleaved_modality(3, 17, 3)
    r = Routing.build(modality, towers=[0, 1, 2], n_towers=3)
    flat = modality.reshape(-1)
    assert sum(r.counts) == flat.numel()
    assert r.counts == tuple(int((flat == k).sum()) for k in range(3))
    sorted_mod = r.to_sorted(flat)
    assert torch.equal(sorted_mod, torch.sort(flat, stable=True).values)
    assert torch.equal(r.to_sequence(sorted_mod), flat)
    # stable: within a tower, tokens keep sequence order
    for k, chunk in enumerate(r.split(r.order)):
        assert torch.all(chunk[1:] > chunk[:-1]), k


def test_tower_map_groups_modalities():
    modality = interleaved_modality(2, 20, 3)
    r = Routing.build(modality, towers=[0, 0, 1], n_towers=2)
    flat = modality.reshape(-1)
    assert r.counts == (int((flat < 2).sum()), int((flat == 2).sum()))


def test_single_tower_is_identity():
    modality = interleaved_modality(2, 9, 3)
    r = Routing.build(modality, towers=[0, 0, 0], n_towers=1)
    x = torch.randn(18, 4)
    assert r.order is None and r.to_sorted(x) is x and r.to_sequence(x) is x


@pytest.mark.parametrize("bad", [-1, 3])
def test_out_of_range_modality_is_a_clear_error(bad):
    modality = interleaved_modality(1, 8, 3)
    modality[0, 4] = bad
    with pytest.raises(ValueError, match="modality ids must be in"):
        Routing.build(modality, towers=[0, 1, 2], n_towers=3)


def test_float_modality_is_rejected():
    with pytest.raises(TypeError, match="integer"):
        Routing.build(torch.zeros(1, 4), towers=[0, 1], n_towers=2)


def test_untied_linear_equals_per_token_loop():
    modality = interleaved_modality(2, 23, 3)
    r = Routing.build(modality, towers=[0, 1, 2], n_towers=3)
    layer = UntiedLinear(8, 5, n_weights=3).double()
    x = torch.randn(2 * 23, 8, dtype=F64)
    routed = r.to_sequence(layer(r.to_sorted(x), r))
    flat = modality.reshape(-1)
    loop = torch.stack([layer.weights[int(flat[i])] @ x[i] for i in range(x.shape[0])])
    assert_close(routed, loop, reduction=8)


def test_untied_rmsnorm_equals_per_token_loop():
    modality = interleaved_modality(2, 15, 3)
    r = Routing.build(modality, towers=[0, 1, 1], n_towers=2)
    norm = UntiedRMSNorm(6, n_weights=2).double()
    with torch.no_grad():
        for w in norm.weights:
            w.normal_()
    x = torch.randn(30, 6, dtype=F64)
    routed = r.to_sequence(norm(r.to_sorted(x), r))
    tower = torch.tensor([0, 1, 1])[modality.reshape(-1)]
    loop = torch.stack([x[i] * torch.rsqrt(x[i].pow(2).mean() + 1e-5) * norm.weights[int(tower[i])]
                        for i in range(30)])
    assert_close(routed, loop, reduction=6)


def test_empty_tower_still_gets_zero_gradient():
    """A tower with no tokens takes part in the graph (DDP needs it) with gradient exactly 0."""
    modality = torch.zeros(2, 6, dtype=torch.long)  # text only
    r = Routing.build(modality, towers=[0, 1, 2], n_towers=3)
    layer = UntiedLinear(4, 4, n_weights=3)
    layer(r.to_sorted(torch.randn(12, 4)), r).sum().backward()
    assert all(w.grad is not None for w in layer.weights)
    assert layer.weights[0].grad.abs().sum() > 0
    assert torch.count_nonzero(weight_grads(layer)[1:]) == 0


def _grads(fn, layer, x, r):
    layer.zero_grad()
    xg = x.clone().requires_grad_(True)
    y = fn(xg, r)
    y.backward(torch.randn_like(y, generator=torch.Generator().manual_seed(1)))
    return y, xg.grad, weight_grads(layer)


@pytest.mark.parametrize("layer_cls", ["linear", "norm"])
def test_grouped_fast_path_matches_reference_forward_and_backward(layer_cls):
    modality = interleaved_modality(3, 21, 3, seed=4)
    modality[:, :] = modality.clamp(max=1)  # speech absent: an empty tower slice too
    r = Routing.build(modality, towers=[0, 1, 2], n_towers=3)
    layer = UntiedLinear(8, 6, n_weights=3) if layer_cls == "linear" else UntiedRMSNorm(8, n_weights=3)
    layer = layer.double()
    with torch.no_grad():
        for w in layer.weights:
            w.add_(torch.randn_like(w))
    x = r.to_sorted(torch.randn(63, 8, dtype=F64))
    fast = _grads(layer, layer, x, r)
    ref = _grads(layer.reference, layer, x, r)
    for name, a, b in zip(("output", "input grad", "weight grad"), fast, ref):
        assert_close(a, b, reduction=63 + 8, msg=name)  # a weight gradient sums over the 63 tokens


@pytest.mark.parametrize("dtype", [F64, torch.float32])
@pytest.mark.parametrize("n_weights", [1, 3])
def test_hand_norm_matches_rms_norm_on_head_views(n_weights, dtype):
    """The hand-written CPU norm, tied and untied, against the ``F.rms_norm`` path that CUDA, autocast and the
    compiler take: forward, input and weight gradients, on ``(N, heads, head_dim)`` views of a wider projection
    (what q/k norms see: not contiguous), with an empty tower slice."""
    counts = (5, 0, 9) if n_weights == 3 else (14,)
    norm = UntiedRMSNorm(8, n_weights).to(dtype)
    with torch.no_grad():
        for w in norm.weights:
            w.normal_()
    gen = torch.Generator().manual_seed(0)
    wide, grad = torch.randn(14, 40, generator=gen, dtype=dtype), torch.randn(14, 3, 8, generator=gen, dtype=dtype)

    def run(fn):
        src = wide.clone().requires_grad_(True)
        norm.zero_grad()
        y = fn(src[:, 8:32].unflatten(-1, (3, 8)), Routing(counts=counts))
        y.backward(grad)
        return y.detach(), src.grad, weight_grads(norm)

    hand, composite = run(norm), run(norm.rms_norm_path)
    probe = norm(wide.requires_grad_(True)[:, :8], Routing(counts=counts))
    assert type(probe.grad_fn).__name__ == "_RMSNormBackward"  # forward took the hand path on the CPU
    assert hand[1][:, :8].abs().max() == 0 and hand[1][:, 32:].abs().max() == 0  # only the view's columns
    for name, a, b in zip(("output", "input grad", "weight grad"), hand, composite):
        assert_close(a, b, reduction=8 + 14 * 3, msg=name)  # a weight gradient sums over 14 x 3 vectors


def test_grouped_linear_follows_autocast():
    modality = interleaved_modality(2, 16, 2)
    r = Routing.build(modality, towers=[0, 1], n_towers=2)
    layer = UntiedLinear(8, 4, n_weights=2)
    x = torch.randn(32, 8, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, ref = layer(x, r), layer.reference(x, r)
    assert y.dtype == ref.dtype == torch.bfloat16
    assert_close(y, ref, reduction=8)
    y.float().sum().backward()
    assert all(w.grad.dtype == torch.float32 for w in layer.weights)
