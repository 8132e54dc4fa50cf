"""Per-tower, per-component views of a model's parameters (what ``callbacks/tower_health.py`` logs).

Every parameter of a ``TokenLM`` falls in one group ``<tower>/<component>``: the tower is the owner label of
``model/towers.py`` (``text``, ``image``, ``text+image`` for grouped towers, ``shared`` for a parameter every
modality uses: a dense backbone, a tied component, embeddings, heads, a plain MoE's experts) and the component
is one of ``COMPONENTS`` (``attn`` holds Q/K/V/O and the QK-norms, ``ffn`` the feed-forward with any router,
``norm`` the block and final RMSNorms, ``embed`` / ``head`` / ``latent`` the shared ends).

``square_sums`` adds ``|t|^2`` over each group. The groups partition the parameters, so the group sums add up
to the square of the global norm: for gradients, exactly the norm the trainer clips (``training/grad_clip.py``
measures the same tensors). Under FSDP2 each rank holds shards (DTensors): the local squares are summed over
the ranks of the mesh, one all-reduce for all groups; under DDP gradients are already averaged and parameters
replicated, so the local sums are the global ones.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.tensor import DTensor

from mot_lightning.model.config import TransformerConfig
from mot_lightning.model.towers import clean_name, parameter_places
from mot_lightning.training.param_groups import owner_label

COMPONENTS = ("attn", "ffn", "norm", "embed", "head", "latent")
LATENT_ENDS = ("latent_in", "time_embed", "latent_out")


def component_of(slot: str) -> str:
    """The component of a parameter slot (``model/towers.py``), e.g. ``backbone.layers.0.attn.wqkv.weights``
    -> ``attn``; ``backbone.layers.0.attn_norm.weights`` -> ``norm``."""
    parts = slot.split(".")
    if parts[0] in ("embed", "head"):
        return parts[0]
    if parts[0] in LATENT_ENDS:
        return "latent"
    for component in ("attn", "ffn"):
        if component in parts:
            return component
    return "norm"


def tower_label(cfg: TransformerConfig, tower: int | None) -> str:
    return owner_label(cfg, tower)


def modality_tower_labels(cfg: TransformerConfig, component: str = "attn") -> list[str]:
    """The label of the tower each modality's tokens use for ``component`` (``shared`` when it is tied)."""
    return [tower_label(cfg, cfg.towers[m] if component in cfg.untied else None) for m in range(cfg.n_modalities)]


@dataclass(frozen=True)
class TowerGroups:
    labels: list[str]  # "<tower>/<component>", sorted
    params: list[list[nn.Parameter]]  # the parameters of each group

    @classmethod
    def of(cls, net: nn.Module, cfg: TransformerConfig) -> TowerGroups:
        """The groups of every parameter of ``net`` (a ``TokenLM``, possibly sharded or wrapped)."""
        places = parameter_places(net)
        groups: dict[str, list[nn.Parameter]] = {}
        for name, p in net.named_parameters():
            place = places[clean_name(name)]
            groups.setdefault(f"{tower_label(cfg, place.tower)}/{component_of(place.slot)}", []).append(p)
        labels = sorted(groups)
        return cls(labels, [groups[k] for k in labels])

    def square_sums(self, tensor_of: Callable[[nn.Parameter], Tensor | None]) -> Tensor:
        """float64[G]: ``sum |tensor_of(p)|^2`` over each group's parameters (None counts nothing), summed over
        the ranks that shard them (FSDP2). Every rank must call this (one collective when sharded)."""
        device = next((p.device for ps in self.params for p in ps), torch.device("cpu"))
        sums, mesh = [], None
        for params in self.params:
            local = []
            for p in params:
                t = tensor_of(p)
                if t is None:
                    continue
                if isinstance(t, DTensor):
                    mesh, t = t.device_mesh, t.to_local()
                local.append(t.detach())
            norms = torch._foreach_norm(local) if local else []  # what get_total_norm computes per tensor
            zero = torch.zeros((), dtype=torch.float64, device=device)
            sums.append(torch.stack([n.double() for n in norms]).pow(2).sum().to(device) if norms else zero)
        out = torch.stack(sums) if sums else torch.zeros(0, dtype=torch.float64, device=device)
        if mesh is not None and dist.is_initialized():
            dist.all_reduce(out, group=mesh.get_group())
        return out
