"""Data-mix schedules: training source weights that change over a run, piecewise constant by optimizer step.

In YAML (``data.loader.weights_schedule``; ``configs/recipes/data_mix.yaml``)::

    data:
      loader:
        weights_schedule:
          - {step: 0, weights: {image_caption: 3.0, text: 1.0}}
          - {step: 200, weights: {image_caption: 1.0, speech_caption: 2.0}}

From an entry's ``step`` until the next entry's, each training document's source is drawn with that
entry's weights. A source an entry does not name keeps the weight it had (before the first entry: its
own ``weight:``). Weights are >= 0 (0 leaves a source out for a while) and at least one source of every
entry must weigh more than 0; steps are whole numbers >= 0, strictly increasing.

Which optimizer step a batch belongs to (``BatchClock``): the training loader hands out epochs of ``N``
batches (``loaders.EpochLoader``; ``N`` = ``data.loader.train_batches_per_epoch``, or fewer under
``trainer.limit_train_batches``), and with ``K = trainer.accumulate_grad_batches`` Lightning steps after
every ``K`` batches and after an epoch's last, so batch ``b`` (0-based) of epoch ``e`` belongs to step
``e * ceil(N / K) + b // K``. With ``W`` DataLoader workers, worker ``w`` makes batches ``w, w + W,
w + 2W, ...`` of each epoch (the DataLoader deals batches round-robin and hands them out in order); a
worker that has yielded ``j`` batches of the epoch is filling batch ``j * W + w``, and draws the sources of
the documents it reads meanwhile with the weights of that batch's step. Prefetching changes when a batch
is made, never which batch it is, so the schedule follows the optimizer step whatever the prefetch depth
and worker count. Documents drawn before a change can still reach batches after it: those held in the
shuffle buffer and the packer's open rows, at most ``shuffle_buffer + pack_open_rows`` per worker, leaving
the buffer at random (most within a few times ``shuffle_buffer`` documents); new documents follow the new
weights from the step on, and a new epoch starts with empty buffers. With ``shuffle_buffer: 0`` and
``pack_open_rows: 1`` the change is exact but for the one row each worker left open. Everything depends only
on (seed, epoch, worker, batch count), so a resumed run, which regenerates its epoch, sees the same
batches as an unbroken one.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

KEY = "data.loader.weights_schedule"


@dataclass
class MixEntry:
    """One entry of ``data.loader.weights_schedule``: from optimizer ``step`` on, these source ``weights``."""

    step: int
    weights: dict[str, float] = field(default_factory=dict)


def check_entries(entries: Sequence[MixEntry | Mapping]) -> list[MixEntry]:
    """The entries as ``MixEntry`` (YAML mappings accepted), checked on their own: steps whole, >= 0 and
    strictly increasing, weights finite and >= 0 (source names are checked against the sources by
    ``MixSchedule.build``)."""
    out: list[MixEntry] = []
    for i, entry in enumerate(entries):
        if isinstance(entry, Mapping):
            unknown = set(entry) - {"step", "weights"}
            if unknown:
                raise ValueError(f"{KEY}[{i}]: unknown keys {sorted(unknown)}; an entry is "
                                 "{step: <optimizer step>, weights: {<source name>: <weight>, ...}}")
            entry = MixEntry(entry.get("step"), dict(entry.get("weights") or {}))
        step = entry.step
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"{KEY}[{i}].step must be a whole number >= 0, got {step!r}")
        if out and step <= out[-1].step:
            raise ValueError(f"{KEY}: steps must increase strictly, got {out[-1].step} then {step} "
                             f"(entries {i - 1} and {i}); sort the entries or merge equal steps")
        if not entry.weights:
            raise ValueError(f"{KEY}[{i}] (step {step}) names no source; give it "
                             "`weights: {<source>: <weight>}`")
        for name, weight in entry.weights.items():
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) \
                    or weight < 0:
                raise ValueError(f"{KEY}[{i}] (step {step}): the weight of {name!r} must be a finite number "
                                 f">= 0, got {weight!r}")
        out.append(MixEntry(step, {str(k): float(v) for k, v in entry.weights.items()}))
    return out


@dataclass(frozen=True)
class MixSchedule:
    """Source weights in source order, piecewise constant: ``weights[i]`` from ``steps[i]`` on (``steps[0]``
    is 0: the sources' own weights when the YAML starts later)."""

    steps: tuple[int, ...]
    weights: tuple[tuple[float, ...], ...]

    @classmethod
    def constant(cls, weights: Sequence[float]) -> MixSchedule:
        return cls((0,), (tuple(float(w) for w in weights),))

    @classmethod
    def build(cls, entries: Sequence[MixEntry | Mapping] | None, names: Sequence[str],
              base: Sequence[float]) -> MixSchedule:
        """The schedule over the sources ``names`` (whose own weights are ``base``) from the YAML entries;
        raises naming an unknown source or an entry that leaves every source at weight 0."""
        current = [float(w) for w in base]
        steps, table = [0], [tuple(current)]
        for i, entry in enumerate(check_entries(entries or [])):
            unknown = sorted(set(entry.weights) - set(names))
            if unknown:
                raise ValueError(f"{KEY}[{i}] (step {entry.step}) names unknown sources {unknown}; the "
                                 f"training sources are {list(names)}")
            current = [entry.weights.get(name, w) for name, w in zip(names, current)]
            if not any(w > 0 for w in current):
                raise ValueError(f"{KEY}[{i}] (step {entry.step}) leaves every source at weight 0; give at "
                                 "least one source a weight > 0")
            if entry.step == 0:
                steps, table = [0], [tuple(current)]
            else:
                steps.append(entry.step)
                table.append(tuple(current))
        return cls(tuple(steps), tuple(table))

    def at(self, step: int) -> tuple[float, ...]:
        """The weights in force at optimizer ``step``."""
        return self.weights[bisect.bisect_right(self.steps, step) - 1]


@dataclass(frozen=True)
class BatchClock:
    """Optimizer step of a training batch (module doc): ``batches`` per epoch, ``accumulate`` per step."""

    batches: int
    accumulate: int = 1

    def __post_init__(self) -> None:
        if self.batches < 1 or self.accumulate < 1:
            raise ValueError(f"BatchClock needs batches >= 1 and accumulate >= 1, got {self}")

    def step(self, epoch: int, batch: int) -> int:
        """Step of batch ``batch`` (0-based) of epoch ``epoch``."""
        per_epoch = -(-self.batches // self.accumulate)  # Lightning steps after an epoch's last batch too
        return epoch * per_epoch + min(batch, self.batches - 1) // self.accumulate

    @classmethod
    def of(cls, trainer, batches: int) -> BatchClock:
        """The clock of a Lightning ``trainer`` (None: one step per batch) whose epochs the loader cuts into
        ``batches`` batches; ``trainer.limit_train_batches`` shortens them by Lightning's rule."""
        if trainer is None:
            return cls(batches)
        limit = getattr(trainer, "limit_train_batches", None)
        if isinstance(limit, int) and not isinstance(limit, bool):
            batches = min(batches, limit)
        elif isinstance(limit, float):
            batches = int(batches * limit)
        return cls(max(batches, 1), int(getattr(trainer, "accumulate_grad_batches", 1) or 1))
