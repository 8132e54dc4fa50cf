"""Optimizer parameter groups: weight decay or not, and per-tower learning-rate / weight-decay multipliers.

No decay: norm weights, embeddings, and any matrix with frozen vocabulary rows (``freezing.py``: AdamW's
decoupled decay would move rows whose gradient is held at zero). Everything else decays.

Without tower multipliers there are two groups, ``decay`` and ``no_decay`` (the layout of every earlier
checkpoint's optimizer state). With ``tower_lr`` / ``tower_weight_decay`` (YAML: ``model.tower_lr: {image:
2.0}``) each owner gets its pair: ``<owner>/decay`` and ``<owner>/no_decay``, where the owner is a tower,
named by the modalities it serves (``image``, or ``text+image`` for a shared tower), or ``shared`` (tied
backbone components, embeddings, head, latent ends: they serve every modality and keep the base values).
A group's learning rate is ``base lr x multiplier`` (the scheduler then scales it by its factor) and its
weight decay ``base weight decay x multiplier``. The group names are what ``LearningRateMonitor`` shows
(``lr-AdamW/image/decay``).

Frozen parameters stay in their group for the whole run (``freezing.py``): without a gradient they get
no optimizer state and no decay, and unfreezing at a step needs no new group, so a resumed run builds
the very same optimizer.
"""
from __future__ import annotations

from collections.abc import Mapping

from torch import nn

from mot_lightning.modality import Modality
from mot_lightning.model.config import TransformerConfig
from mot_lightning.model.towers import Place, clean_name, tower_modalities
from mot_lightning.model.untied import UntiedBias, UntiedRMSNorm

LR_SCALE, WD_SCALE = "lr_scale", "weight_decay_scale"  # extra keys of a param group (saved with the optimizer)


def parse_multipliers(values: Mapping[str, float] | None, n_modalities: int, key: str) -> dict[int, float]:
    """``{modality label: multiplier}`` from YAML -> ``{modality id: multiplier}``, checked."""
    out: dict[int, float] = {}
    for label, value in (values or {}).items():
        m = Modality.parse(label)
        if m >= n_modalities:
            raise ValueError(f"{key} names {m.label}, but the model has {n_modalities} modalities")
        if float(value) < 0:
            raise ValueError(f"{key}.{m.label} must be >= 0, got {value}")
        out[int(m)] = float(value)
    return out


def owner_label(cfg: TransformerConfig, tower: int | None) -> str:
    return "shared" if tower is None else "+".join(Modality(m).label for m in tower_modalities(cfg, tower))


def tower_scale(cfg: TransformerConfig, tower: int | None, scales: dict[int, float], key: str) -> float:
    """The multiplier of a tower: the one its modalities agree on (1 for shared parameters)."""
    if tower is None:
        return 1.0
    values = {scales.get(m, 1.0) for m in tower_modalities(cfg, tower)}
    if len(values) > 1:
        raise ValueError(f"{key}: tower {tower} serves {owner_label(cfg, tower)}, whose multipliers differ "
                         f"({sorted(values)}); give the modalities of one tower the same value")
    return values.pop()


def parameter_groups(named: list[tuple[str, nn.Parameter]], places: Mapping[str, Place], no_decay: set[str],
                     cfg: TransformerConfig, tower_lr: Mapping[str, float] | None = None,
                     tower_weight_decay: Mapping[str, float] | None = None) -> list[dict]:
    """Param groups for the optimizer callable: ``{"params", "name", "lr_scale", "weight_decay_scale",
    "decay"}``. ``named``: every parameter (frozen ones too) by ``clean_name``; ``places``, ``no_decay``: by
    the same names. Apply the scales with ``apply_scales`` once the optimizer is built."""
    lr = parse_multipliers(tower_lr, cfg.n_modalities, "model.tower_lr")
    wd = parse_multipliers(tower_weight_decay, cfg.n_modalities, "model.tower_weight_decay")
    per_tower = bool(lr or wd)
    if per_tower and not cfg.untied:
        raise ValueError(f"model.tower_lr / tower_weight_decay act on untied towers; this backbone "
                         f"(sparsity={cfg.sparsity!r}) has none: drop them or use sparsity: mot")
    groups: dict[tuple[str, bool], dict] = {}
    for name, p in named:
        place = places.get(name)
        tower = place.tower if per_tower and place is not None else None
        owner, decay = owner_label(cfg, tower) if per_tower else "", name not in no_decay
        key = (owner, decay)
        if key not in groups:
            groups[key] = {"params": [], "name": f"{owner}/" * bool(owner) + ("decay" if decay else "no_decay"),
                           "decay": decay, LR_SCALE: tower_scale(cfg, tower, lr, "model.tower_lr"),
                           WD_SCALE: tower_scale(cfg, tower, wd, "model.tower_weight_decay")}
        groups[key]["params"].append(p)
    owners = list(dict.fromkeys(owner for owner, _ in groups))  # first-seen order, decay before no_decay
    return [groups[(o, d)] for o in owners for d in (True, False) if (o, d) in groups]


def apply_scales(optimizer) -> None:
    """Each group's lr and weight decay from the optimizer's base values and the group's multipliers (before
    the scheduler records its ``initial_lr``); no-decay groups get weight decay 0."""
    for group in optimizer.param_groups:
        if "lr" in group:
            group["lr"] = group["lr"] * group.get(LR_SCALE, 1.0)
        if "weight_decay" in group:
            group["weight_decay"] = group["weight_decay"] * group.get(WD_SCALE, 1.0) if group.get("decay", True) \
                else 0.0


def no_decay_names(module: nn.Module, extra: set[str] = frozenset()) -> set[str]:
    """Parameter names (``state_dict`` spelling, ``towers.clean_name``) that never decay: norm weights,
    biases, embeddings, and ``extra``."""
    out = set(extra)
    for mname, m in module.named_modules():
        if isinstance(m, (UntiedRMSNorm, UntiedBias, nn.Embedding)):
            out.update(clean_name(f"{mname}.{n}" if mname else n) for n, _ in m.named_parameters())
    return out
