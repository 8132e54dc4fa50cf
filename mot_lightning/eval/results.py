"""What one evaluation returns: named metrics with their sample counts and sampling errors, notes, samples."""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor


@dataclass(frozen=True)
class Metric:
    value: float
    n: int  # samples behind the value
    description: str
    se: float | None = None  # sampling standard error (errors.py); None: not estimated


@dataclass
class Sample:
    """A generated picture with its caption and what the scorer found wrong (for grids)."""

    image: Tensor  # float[3, R, R]
    caption: str
    misses: list[str]  # what was judged wrong ("extra" for groups the caption does not name)
    split: str


@dataclass
class EvalResult:
    metrics: dict[str, Metric] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)

    def values(self) -> dict[str, float]:
        return {k: m.value for k, m in self.metrics.items()}

    def add(self, prefix: str, values: dict[str, float], n: int, description: str,
            se: dict[str, float] | None = None) -> None:
        """``prefix + name`` for each of ``values``, with ``se[name]`` as its sampling error when given."""
        for name, value in values.items():
            error = None if se is None or name not in se else float(se[name])
            self.metrics[f"{prefix}{name}"] = Metric(float(value), n, description, error)
