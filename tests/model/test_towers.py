"""One Parameter per tower: places (slot, tower) of every parameter, a frozen tower inside the fused kernels,
and checkpoints of the earlier stacked layout."""
import pytest
import torch

from mot_lightning.model import Transformer, TransformerConfig
from mot_lightning.model.lm import TokenLM
from mot_lightning.model.towers import parameter_places, tower_modalities
from mot_lightning.model.untied import Routing, UntiedLinear, UntiedRMSNorm
from tests.model.helpers import interleaved_modality


def _cfg(**kw) -> TransformerConfig:
    return TransformerConfig(**{"dim": 32, "n_layers": 2, "n_heads": 4, "n_modalities": 3, **kw})


@pytest.mark.parametrize("kw", [{"sparsity": "dense"}, {"sparsity": "mot"}, {"untie": ["ffn"], "towers": [0, 0, 1]},
                                {"moe_towers": [1]}, {"sparsity": "moe"}])
def test_every_parameter_has_a_place_and_every_tower_the_same_slots(kw):
    net = TokenLM(_cfg(**kw), 40)
    places = parameter_places(net)
    assert list(places) == [n for n, _ in net.named_parameters()]
    cfg = net.backbone.cfg
    towers = {p.tower for p in places.values()} - {None}
    assert towers == (set(range(cfg.n_towers)) if cfg.untied else set())
    plain = [t for t in towers if cfg.moe_towers is None or t not in cfg.moe_towers]
    slots = {t: {p.slot for p in places.values() if p.tower == t} for t in plain}
    assert len({frozenset(s) for s in slots.values()}) <= 1  # plain towers sit in the same slots
    assert places["embed.weight"].tower is None and places["head.weight"].tower is None
    assert tower_modalities(cfg, None) == [0, 1, 2]


def test_dense_and_mot_share_slots_so_weights_move_between_them():
    dense, mot = (parameter_places(TokenLM(_cfg(sparsity=s), 40)) for s in ("dense", "mot"))
    assert {p.slot for p in dense.values()} == {p.slot for p in mot.values()}
    hybrid = parameter_places(TokenLM(_cfg(moe_towers=[0]), 40))
    plain_slots = {p.slot for p in hybrid.values() if p.tower in (1, 2)}
    assert plain_slots <= {p.slot for p in mot.values()}  # a hybrid's plain towers sit where MoT towers do
    assert hybrid["backbone.layers.0.ffn.moe.0.router"].tower == 0
    assert tower_modalities(TransformerConfig(n_modalities=3, towers=[0, 0, 1]), 0) == [0, 1]


@pytest.mark.parametrize("layer_cls", [UntiedLinear, UntiedRMSNorm])
def test_a_frozen_tower_gets_no_gradient_and_the_others_the_same_as_unfrozen(layer_cls):
    modality = interleaved_modality(2, 20, 3)
    r = Routing.build(modality, towers=[0, 1, 2], n_towers=3)
    layer = UntiedLinear(8, 6, n_weights=3) if layer_cls is UntiedLinear else UntiedRMSNorm(8, n_weights=3)
    x = r.to_sorted(torch.randn(40, 8))
    layer(x, r).pow(2).sum().backward()
    reference = [w.grad.clone() for w in layer.weights]
    layer.zero_grad(set_to_none=True)
    layer.weights[1].requires_grad_(False)
    layer(x, r).pow(2).sum().backward()
    assert layer.weights[1].grad is None
    for k in (0, 2):  # same kernels, same shapes: bitwise
        assert torch.equal(layer.weights[k].grad, reference[k])


def test_checkpoints_of_the_stacked_layout_load():
    """Before one Parameter per tower, an untied layer held ``weight: (n_towers, ...)``."""
    model = Transformer(_cfg())
    stacked = {}
    for name, t in model.state_dict().items():
        head, _, k = name.rpartition(".weights.")
        if head:
            stacked.setdefault(head + ".weight", {})[int(k)] = t
        else:
            stacked[name] = t
    stacked = {k: torch.stack([v[i] for i in sorted(v)]) if isinstance(v, dict) else v for k, v in stacked.items()}
    assert stacked["layers.0.attn.wqkv.weight"].shape[0] == 3
    fresh = Transformer(_cfg())
    fresh.load_state_dict(stacked)
    for (name, a), b in zip(fresh.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), name
