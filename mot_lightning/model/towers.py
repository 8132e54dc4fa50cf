"""Which tower owns each parameter: what freezing, per-tower optimisation and warm starts read.

Every parameter has a *place*: its ``slot`` (where it sits in the architecture, the same string for
every tower: ``backbone.layers.0.attn.wqkv.weights``) and its ``tower`` (the tower that owns it, or None
when it is shared by every tower: tied components, embeddings, heads, a plain MoE's experts and router).
Two models of the same size but another tower map (dense, MoT, grouped towers, partial untying) have the
same slots, so a weight moves between them by (slot, tower). The towers a modality uses come from
``TransformerConfig.towers``; a shared parameter is used by every modality.

Names are those of ``named_parameters`` with wrapper parts removed (activation checkpointing's
``_checkpoint_wrapped_module.``, ``torch.compile``'s ``_orig_mod.``): the keys of ``state_dict``.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from mot_lightning.model.config import TransformerConfig
from mot_lightning.model.feedforward import HybridFeedForward
from mot_lightning.model.untied import UntiedBias, UntiedLinear, UntiedRMSNorm

WRAPPER_PARTS = ("_checkpoint_wrapped_module.", "_orig_mod.")


@dataclass(frozen=True)
class Place:
    slot: str  # the parameter's place with the tower taken out
    tower: int | None  # the owning tower; None: shared by every tower


def clean_name(name: str) -> str:
    """A parameter or module name as ``state_dict`` spells it (wrapper parts removed)."""
    for part in WRAPPER_PARTS:
        name = name.replace(part, "")
    return name


def parameter_places(module: nn.Module) -> dict[str, Place]:
    """``{name: Place}`` for every parameter of ``module`` (a ``Transformer``, a ``TokenLM``, or a module
    holding one), in ``named_parameters`` order."""
    places: dict[str, Place] = {}
    hybrid_moe: dict[str, tuple[str, int]] = {}  # "<ffn>.moe.<j>." -> ("<ffn>.moe.*.", tower)
    plain_ffn: dict[str, str] = {}  # "<ffn>.plain." -> "<ffn>."
    for mname, m in module.named_modules():
        prefix = clean_name(mname) + "." if mname else ""
        if isinstance(m, (UntiedLinear, UntiedRMSNorm, UntiedBias)):
            for k in range(m.n_weights):
                if m.tower_ids is not None:
                    places[f"{prefix}weights.{k}"] = Place(f"{prefix}weights", m.tower_ids[k])
                elif m.n_weights == 1:  # tied: the slot the untied towers of another model share
                    places[f"{prefix}weights.{k}"] = Place(f"{prefix}weights", None)
        elif isinstance(m, HybridFeedForward):
            for j, tower in enumerate(m.moe_towers):
                hybrid_moe[f"{prefix}moe.{j}."] = (f"{prefix}moe.*.", tower)
            plain_ffn[f"{prefix}plain."] = prefix  # the plain towers sit where an MoT's FFN towers do
    out = {}
    for name, _ in module.named_parameters():
        name = clean_name(name)
        place = places.get(name, Place(name, None))
        for plain_prefix, ffn_prefix in plain_ffn.items():
            if name.startswith(plain_prefix):
                place = Place(ffn_prefix + place.slot[len(plain_prefix):], place.tower)
        for moe_prefix, (slot_prefix, tower) in hybrid_moe.items():
            if name.startswith(moe_prefix):  # an MoE tower of a hybrid: all of it belongs to that tower
                place = Place(slot_prefix + place.slot[len(moe_prefix):], tower)
        out[name] = place
    return out


def tower_modalities(cfg: TransformerConfig, tower: int | None) -> list[int]:
    """Modality ids whose tokens use ``tower`` (every modality for a shared parameter, ``tower=None``)."""
    if tower is None:
        return list(range(cfg.n_modalities))
    return [m for m, t in enumerate(cfg.towers) if t == tower]
