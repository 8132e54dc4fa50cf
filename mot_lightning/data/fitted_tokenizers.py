"""Fit-once tokenizer files for the data module (``data.tokenizer_files``).

Learned tokenizers (k-means image patches, speech units, VQ-VAE, ...) are
configured in YAML by class and config like any other; their weights live in
``<dir>/<modality>-<Class>-<hash of its config and of what it is fitted on>.pt``.
``prepare_data`` (one process per node) fits every unfitted tokenizer whose file
is missing on the training data and saves it; ``setup`` (every process) loads
the file. A changed tokenizer config, or the same config on other data, therefore
gets a new file instead of silently reusing weights fitted on something else.
``FitPlace`` says where the files are: the directory, the data's identity
(``data_key``, ``SourcePlan.fit_key``) and ``explicit``, which maps a modality to
a file made elsewhere (``mot tokenizer fit``), then loaded and never refitted.

Once per shared filesystem: each fit holds ``<file>.lock`` (``locks.once``), checks
again that the file is missing, and saves under a name unique to the process
before renaming it into place, so nodes sharing the directory fit it once.
Fitting runs under a forked random state (torch, numpy, ``random``): a run that
fits first and a run that loads the file start training from the same state.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import os
import random
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from mot_lightning.data.locks import once, unique_temp
from mot_lightning.modality import Modality
from mot_lightning.tokenizers.base import Tokenizer
from mot_lightning.tokenizers.fitting import FitData, FittableTokenizer, TrainConfig

Tokenizers = dict[Modality, Tokenizer | None]


def needs_file(tok: Tokenizer | None) -> bool:
    return isinstance(tok, FittableTokenizer) and not tok.is_fitted


@dataclasses.dataclass(frozen=True)
class FitPlace:
    """Where fitted tokenizer files live (``SourcePlan.fit_place``): ``directory``, named by ``data_key`` (what
    they are fitted on; None: by the config alone), except the files ``explicit`` names per modality."""

    directory: str
    explicit: dict[Modality, str] = dataclasses.field(default_factory=dict)
    data_key: str | None = None

    def path(self, modality: Modality, tok: Tokenizer) -> Path:
        """The file ``tok`` is fitted into: named by its class, config and ``data_key``, or the one
        ``explicit`` names for ``modality``."""
        if modality in self.explicit:
            return Path(self.explicit[modality])
        key = _config_key(tok)
        if self.data_key is not None:
            key += f"\ndata:{self.data_key}"
        digest = hashlib.sha1(key.encode()).hexdigest()[:10]
        return Path(self.directory) / f"{modality.label}-{type(tok).__name__}-{digest}.pt"


def _config_key(tok: Tokenizer) -> str:
    """A tokenizer's class and config as one string (what its file name hashes; ``holds`` compares it)."""
    return f"{type(tok).__name__}:{getattr(tok, 'config', None)!r}"


def fit_missing(tokenizers: Tokenizers, place: FitPlace, fit_data: str | None, train: TrainConfig | None = None,
                fit_items: int | None = None) -> None:
    """Fit and save each unfitted tokenizer that has no file yet (call from ``prepare_data``).

    ``place.data_key`` must identify what is fitted on: ``fit_data`` read up to ``fit_items`` items.
    ``train`` sets the optimisation of neural tokenizers (VQ-VAE, KL-VAE); the others ignore it.
    """
    for modality, tok in tokenizers.items():
        if not needs_file(tok):
            continue
        path = place.path(modality, tok)
        if path.exists():
            continue
        if modality in place.explicit:
            raise FileNotFoundError(
                f"data.tokenizer_files.files names {path} for {modality.label}, but it does not exist: "
                "fit it with `mot tokenizer fit` or drop the entry to fit one here")
        if fit_data is None:
            raise FileNotFoundError(
                f"no fitted {modality.label} tokenizer at {path} and no data to fit one on: set "
                "`data.tokenizer_files.fit_data` to shards/files of your data, or fit one with "
                "`mot tokenizer fit`")
        with once(path, f"fitting the {modality.label} tokenizer"):
            if not path.exists():  # another node may have fitted it while we waited
                _fit_and_save(modality, tok, path, FitData(path=fit_data, max_items=fit_items), train)


def _fit_and_save(modality: Modality, tok: Tokenizer, path: Path, data: FitData, train: TrainConfig | None) -> None:
    """Fit a copy of ``tok`` and save it: every process then loads the same file in ``setup`` (the one that
    fitted too, whose in-memory fit could differ from what the file holds)."""
    cap = "" if data.max_items is None else f" (at most {data.max_items} items)"
    print(f"fitting the {modality.label} tokenizer ({type(tok).__name__}) on {data.path}{cap} ...", flush=True)
    run = dataclasses.replace(train or TrainConfig(), run_name=path.stem)  # TensorBoard: <log_dir>/<stem>
    tok = copy.deepcopy(tok)
    with forked_random_state():
        metrics = tok.fit(data, run)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = unique_temp(path)
    tok.save(str(tmp))
    tmp.replace(path)  # atomic: other processes never see a half-written file
    shown = ", ".join(f"{k}={v:.3g}" for k, v in metrics.items())
    print(f"  saved {path} ({shown})", flush=True)


@contextmanager
def forked_random_state() -> Iterator[None]:
    """Run the body with torch's (CPU and CUDA), numpy's and ``random``'s global generators restored after,
    and Lightning's seed variables (a neural tokenizer's fit calls ``seed_everything`` with its own seed,
    which would also change how the data workers are seeded)."""
    py_state, np_state = random.getstate(), np.random.get_state()
    env = {name: os.environ.get(name) for name in _SEED_VARIABLES}
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=cuda):
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
            for name, value in env.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


_SEED_VARIABLES = ("PL_GLOBAL_SEED", "PL_SEED_WORKERS")


def load_fitted(tokenizers: Tokenizers, place: FitPlace) -> Tokenizers:
    """Replace each unfitted tokenizer by the one in its file (call from ``setup``)."""
    out = dict(tokenizers)
    for modality, tok in tokenizers.items():
        if not needs_file(tok):
            continue
        path = place.path(modality, tok)
        if not path.exists():
            others = sorted(p.name for p in path.parent.glob(f"{modality.label}-{type(tok).__name__}-*.pt"))
            hint = (f"; {path.parent} holds fits of this class for other configs or data ({', '.join(others)}): "
                    f"name the one you mean with --data.tokenizer_files.files '{{\"{modality.label}\": FILE}}'"
                    if others and modality not in place.explicit else "")
            raise FileNotFoundError(f"fitted {modality.label} tokenizer {path} is missing: run "
                                    f"`prepare_data` (`mot fit` does) or fit it with `mot tokenizer fit`{hint}")
        loaded = type(tok).load(str(path))
        if getattr(loaded, "vocab_size", None) != getattr(tok, "vocab_size", None):
            raise ValueError(f"{path} has vocab_size {loaded.vocab_size} but the config says "
                             f"{tok.vocab_size}: fit a new file or fix the tokenizer config")
        out[modality] = loaded
    return out


def holds(path: str | Path, tok: Tokenizer) -> bool:
    """Whether ``path`` is a fitted tokenizer of ``tok``'s class and config (False for an unreadable file)."""
    try:
        loaded = type(tok).load(str(path))
    except Exception:  # an unreadable or foreign file is simply not this tokenizer
        return False
    return type(loaded) is type(tok) and _config_key(loaded) == _config_key(tok)


def fitted_files(tokenizers: dict, place: FitPlace) -> dict:
    """Modality -> the fitted file each fittable tokenizer is (or would be) loaded from, as a string."""
    return {m: str(place.path(m, t)) for m, t in tokenizers.items() if isinstance(t, FittableTokenizer)}
