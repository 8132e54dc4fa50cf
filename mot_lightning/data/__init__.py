"""Data layer: WebDataset shards -> decoded documents -> joint token ids -> packed ``MultiModalBatch``.

Read in this order: ``batch.py`` (the contract), ``vocab.py`` (joint ids),
``packing.py``, ``stream.py``, ``options.py`` (the grouped arguments),
``datamodule.py``. ``demo.py`` writes the demo corpus (from ``mot_lightning/world``),
``fitted_tokenizers.py`` keeps fit-once tokenizer files, ``convert.py`` the shard
converters that ``mot data`` (``commands/data.py``) runs. Shards are read by ``mot_lightning/shards``.

Exports are imported lazily so ``mot data demo`` does not pay for importing Lightning.
"""

from __future__ import annotations

import importlib

from mot_lightning.shards.reader import register_generator
from mot_lightning.world import virtual

# the procedural demo world's virtual shards (world://...) are read like any shard: registered here, in every
# process that imports the data layer (DataLoader workers unpickle data-layer objects, so they import it too)
register_generator(virtual.SCHEME, virtual.samples)

_EXPORTS = {
    "IGNORE_INDEX": "mot_lightning.data.batch",
    "MultiModalBatch": "mot_lightning.data.batch",
    "JointVocab": "mot_lightning.data.vocab",
    "MultiModalDataModule": "mot_lightning.data.datamodule",
    "LoaderConfig": "mot_lightning.data.options",
    "DemoCorpus": "mot_lightning.data.options",
    "TokenizerFiles": "mot_lightning.data.options",
    "SourceConfig": "mot_lightning.data.sources",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'mot_lightning.data' has no attribute {name!r}")
