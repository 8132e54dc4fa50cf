"""Data layer: WebDataset shards -> decoded documents -> joint token ids -> packed ``MultiModalBatch``.

Read in this order: ``batch.py`` (the contract), ``vocab.py`` (joint ids),
``packing.py``, ``stream.py``, ``datamodule.py``. ``demo.py`` builds the demo
corpus, ``convert.py`` and ``cli.py`` the ``mot data`` commands.

Exports are imported lazily so ``mot data demo`` does not pay for importing Lightning.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "IGNORE_INDEX": "mot_lightning.data.batch",
    "MultiModalBatch": "mot_lightning.data.batch",
    "JointVocab": "mot_lightning.data.vocab",
    "MultiModalDataModule": "mot_lightning.data.datamodule",
    "SourceConfig": "mot_lightning.data.sources",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'mot_lightning.data' has no attribute {name!r}")
