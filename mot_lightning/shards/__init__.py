"""The shard layer below ``data/`` and ``tokenizers/``: URL expansion and tar shard reading.

``urls.py`` turns what a config writes (brace patterns, ``::`` lists, lists, local
globs) into URL lists; ``reader.py`` turns tar shards into raw samples and counts
what it could not read through any object with ``add(name, n=1, detail="")``.
Imports nothing else from ``mot_lightning``.
"""
