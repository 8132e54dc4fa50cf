"""What fitting a tokenizer needs: where the data is (``FitData``), how to train neural ones
(``TrainConfig``), and the ``FittableTokenizer`` interface the ``mot tokenizer fit`` command calls.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any


@dataclass
class FitData:
    """Training inputs of a tokenizer fit."""

    path: str  # folder / file / glob of media files, or WebDataset .tar shards (see fit_inputs.py)
    held_out: float = 0.1  # fraction of items (chosen by key hash) kept out of fitting, for the metrics
    max_items: int | None = None  # read at most this many items (None: all)
    seed: int = 0  # seeds the held-out split


@dataclass
class TrainConfig:
    """Optimisation and Lightning Trainer settings for the neural tokenizers (VQ-VAE, KL-VAE)."""

    max_steps: int = 2000
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.0
    warmup_steps: int = 50
    val_every_n_steps: int = 200
    num_workers: int = 0
    accelerator: str = "auto"
    devices: int | str = 1
    precision: str = "32-true"
    log_dir: str = "runs/tokenizers"  # TensorBoard logs: <log_dir>/<run_name>/version_<n>
    run_name: str = "tokenizer"
    seed: int = 0
    progress_bar: bool = True
    trainer_kwargs: dict[str, Any] = field(default_factory=dict)  # any further lightning.Trainer argument


class FittableTokenizer(ABC):
    """A tokenizer whose codebook/weights are learned from the user's data."""

    @abstractmethod
    def fit(self, data: FitData, train: TrainConfig | None = None) -> dict[str, float]:
        """Fit on ``data`` (in place) and return held-out metrics (name -> value)."""

    @property
    def is_fitted(self) -> bool:
        return True

    def _require_fitted(self) -> None:
        if not self.is_fitted:
            raise RuntimeError(
                f"{type(self).__name__} is not fitted: call .fit(...), {type(self).__name__}.load(path), "
                f"or fit one with `mot tokenizer fit --config configs/tokenizers/<name>.yaml`"
            )
