"""Freezing (``model.freeze``): towers by modality, shared parts, vocabulary rows, optionally until a step.

What freezes (YAML ``model.freeze: {modalities: [text], shared: [embed, head], rows: [], until_step: null}``):

- ``modalities``: the towers serving only these modalities (through the backbone's tower map). A backbone
  component tied across towers (``untie`` without it, or a dense backbone) serves every modality: it stays
  trainable unless every modality of the model is listed. A tower shared by a frozen and a trainable
  modality (``towers: [0, 0, 1]``) stays trainable.
- ``shared``: whole shared parameters: ``embed``, ``head``, ``latent`` (a Transfusion model's latent ends).
- ``rows``: ``embed`` / ``head`` keep training, except the rows of the frozen modalities' vocabulary
  ranges (``vocab_rows.py``). Their gradient is set to zero before every optimizer step (after the
  gradients are reduced, before clipping, so they do not count in the norm) and the whole matrix is in
  the no-decay group (``param_groups.py``): AdamW then leaves those rows bitwise unchanged (zero gradient
  and zero moments give a zero step; decay 0 multiplies by exactly 1). The price: the trained rows of a
  row-frozen head get no weight decay either. Text's range includes the special tokens unless
  ``special_rows: false``: a text-only base model never saw BOI/EOI, and frozen rows could never learn
  them, so an LMFusion-style run leaves them trainable.
- ``until_step``: from this optimizer step on nothing is frozen (None: frozen for the whole run).

A frozen parameter has ``requires_grad=False``: no gradient, hence no optimizer state and no weight decay
(PyTorch optimizers skip parameters without a gradient). It stays in its optimizer group for the whole run,
so unfreezing needs no new group and a resumed run (before or after the step) builds the same optimizer;
its state starts empty at the first step it trains. Whether a parameter is frozen is a function of the
optimizer step, set again at every step: resume-exact.

Strategies. One device and FSDP2 (``ModelParallelStrategy``; it reads ``requires_grad`` at every
all-gather) need nothing more. DDP builds its gradient buckets from the parameters that require a gradient
when it wraps the model, so a parameter frozen then and unfrozen later is averaged across ranks here, once
per optimizer step. FSDP1 (``FSDPStrategy``) flattens parameters and is refused with freezing.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy
from torch import Tensor, nn
from torch.distributed.tensor import DTensor, distribute_tensor

from mot_lightning.modality import Modality
from mot_lightning.model.lm import TokenLM
from mot_lightning.model.towers import clean_name, parameter_places, tower_modalities
from mot_lightning.training.vocab_rows import modality_rows

SHARED_PARTS = {"embed": ("embed.",), "head": ("head.",), "latent": ("latent_in.", "time_embed.", "latent_out.")}
ROW_PARTS = {"embed": "embed.weight", "head": "head.weight"}


@dataclass
class Freeze:
    """``model.freeze``: what does not train (see the module docstring)."""

    modalities: list[str] = field(default_factory=list)  # towers serving only these modalities
    shared: list[str] = field(default_factory=list)  # whole shared parameters: embed | head | latent
    rows: list[str] = field(default_factory=list)  # embed | head: only the frozen modalities' vocabulary rows
    special_rows: bool = True  # with rows and a frozen text: the special tokens' rows (BOI, EOI, ...) freeze too
    until_step: int | None = None  # optimizer step from which nothing is frozen; None: the whole run


class Freezer:
    """What ``spec`` freezes in a module holding ``net`` at ``prefix``, and the per-step hooks that keep it so."""

    def __init__(self, spec: Freeze, net: TokenLM, layout: Mapping[str, int] | None, prefix: str = "net.") -> None:
        cfg = net.backbone.cfg
        self.spec = spec
        self.frozen_modalities = {int(Modality.parse(m)) for m in spec.modalities}
        self._check(cfg.n_modalities, layout, net)
        self.frozen = {prefix + name for name, place in parameter_places(net).items()
                       if self._frozen(name, tower_modalities(cfg, place.tower))}  # whole parameters
        rows = modality_rows(layout, self.frozen_modalities, spec.special_rows) if spec.rows else None
        self.row_masks = {prefix + ROW_PARTS[part]: rows[:, None] for part in spec.rows}  # bool (V, 1)
        self._local_masks: dict[str, Tensor] = {}
        self.frozen_at_wrap: set[str] = set()  # frozen when a DDP wrapper built its buckets

    def _check(self, n_modalities: int, layout, net: TokenLM) -> None:
        s = self.spec
        bad = [m for m in self.frozen_modalities if m >= n_modalities]
        unknown = [p for p in s.shared if p not in SHARED_PARTS] + [p for p in s.rows if p not in ROW_PARTS]
        if bad or unknown:
            raise ValueError(f"model.freeze: unknown or absent entries {[Modality(m).label for m in bad] + unknown}: "
                             f"modalities of this model (n_modalities={n_modalities}), shared from "
                             f"{sorted(SHARED_PARTS)}, rows from {sorted(ROW_PARTS)}")
        if set(s.shared) & set(s.rows):
            raise ValueError(f"model.freeze: {sorted(set(s.shared) & set(s.rows))} in both shared (the whole matrix) "
                             "and rows (the frozen modalities' rows): choose one")
        if s.rows and (not self.frozen_modalities or layout is None):
            raise ValueError("model.freeze.rows needs model.freeze.modalities (whose rows) and the vocabulary layout "
                             "(model.vocab_layout, linked from the data by `mot fit`)")
        if "latent" in s.shared and net.latent_dim == 0:
            raise ValueError("model.freeze.shared names latent, but this model has no latent ends (latent_dim 0)")
        if s.until_step is not None and s.until_step < 0:
            raise ValueError(f"model.freeze.until_step must be >= 0 or null, got {s.until_step}")

    def _frozen(self, name: str, used_by: list[int]) -> bool:
        if name.startswith("backbone."):
            return bool(self.frozen_modalities) and set(used_by) <= self.frozen_modalities
        return any(name.startswith(prefixes) for part in self.spec.shared for prefixes in SHARED_PARTS[part])

    @property
    def no_decay(self) -> set[str]:
        """Matrices with frozen rows: never decayed (see the module docstring)."""
        return set(self.row_masks)

    def active(self, step: int) -> bool:
        return self.spec.until_step is None or step < self.spec.until_step

    def apply(self, module: nn.Module, step: int) -> bool:
        """Set ``requires_grad`` for optimizer step ``step``; True when something changed."""
        frozen, changed = self.active(step), False
        for name, p in _named(module).items():
            if name in self.frozen and p.requires_grad == frozen:
                p.requires_grad_(not frozen)
                changed = True
        return changed

    def check_strategy(self, strategy) -> None:
        if isinstance(strategy, FSDPStrategy):
            raise TypeError("model.freeze needs per-parameter requires_grad: use ModelParallelStrategy (FSDP2, "
                             "configs/trainer/fsdp2.yaml), DDP or one device, not FSDPStrategy (FSDP1)")
        if isinstance(strategy, DDPStrategy):  # configure_model ran: these are out of DDP's buckets
            self.frozen_at_wrap = set(self.frozen) if self.active(0) else set()  # configure_model: step 0

    def before_optimizer_step(self, module: nn.Module, strategy, step: int) -> None:
        """Average the gradients DDP does not (parameters unfrozen after it wrapped the model), then zero the
        gradients of frozen vocabulary rows."""
        params = _named(module)
        late = [params[n].grad for n in sorted(self.frozen_at_wrap) if params[n].grad is not None]
        if late and isinstance(strategy, DDPStrategy) and dist.is_initialized() and dist.get_world_size() > 1:
            flat = torch._utils._flatten_dense_tensors(late)
            dist.all_reduce(flat)
            flat /= dist.get_world_size()
            for grad, synced in zip(late, torch._utils._unflatten_dense_tensors(flat, late)):
                grad.copy_(synced)
        if not self.active(step):
            return
        for name, mask in self.row_masks.items():
            grad = params[name].grad
            if grad is not None:
                local = grad.to_local() if isinstance(grad, DTensor) else grad
                local.masked_fill_(self._local_mask(name, params[name], mask), 0.0)

    def _local_mask(self, name: str, p: Tensor, mask: Tensor) -> Tensor:
        """This rank's rows of ``mask`` (the rows of its shard of a sharded ``p``), on ``p``'s device."""
        if name not in self._local_masks:
            if isinstance(p, DTensor):  # no communication: every rank holds the full mask and keeps its rows
                local = distribute_tensor(mask.to(p.device), p.device_mesh, p.placements, src_data_rank=None)
                self._local_masks[name] = local.to_local()
            else:
                self._local_masks[name] = mask.to(p.device)
        return self._local_masks[name]

    def counts(self, module: nn.Module, step: int) -> dict[str, float]:
        """``params/trainable`` and ``params/frozen`` (element counts) at optimizer step ``step``."""
        params = _named(module)
        total = sum(p.numel() for p in params.values())
        trainable = sum(p.numel() for p in params.values() if p.requires_grad)
        if self.active(step):
            trainable -= sum(int(m.sum()) * params[n].shape[1] for n, m in self.row_masks.items())
        return {"params/trainable": float(trainable), "params/frozen": float(total - trainable)}


def _named(module: nn.Module) -> dict[str, nn.Parameter]:
    return {clean_name(n): p for n, p in module.named_parameters()}


def param_counts(module: nn.Module) -> dict[str, float]:
    """``params/trainable`` / ``params/frozen`` of a module without ``model.freeze``."""
    params = list(module.parameters())
    trainable = sum(p.numel() for p in params if p.requires_grad)
    return {"params/trainable": float(trainable), "params/frozen": float(sum(p.numel() for p in params) - trainable)}
