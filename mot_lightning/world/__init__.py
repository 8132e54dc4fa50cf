"""The one synthetic-media source: a small deterministic world of coloured shapes.

``procedural.py`` the demo world: ``SceneSpec`` of 1-3 ``Group`` s in distinct regions, continuous
                  positions and sizes, its vocabulary (shapes, colours, sizes, regions, backgrounds), its
                  held-out colour/shape pairs, ``render``;
``captions.py``   its captions (several frames, phrase orders, synonyms), questions, and
                  ``parse_caption``, the inverse of ``caption``;
``virtual.py``    the one document generator: virtual shards of the world, ``world://`` URLs -> raw samples
                  in every shard layout, generated deterministically from (seed, split, kind, index);
``speech.py``     spoken captions: a built-in deterministic synthesizer, or espeak-ng;
``folders.py``    PNG / WAV / TXT folders of renders, spoken captions and descriptions
                  (``mot tokenizer demo-data``, the tokenizer tests).

The demo corpus writer (``data/demo.py``) writes the first documents of the virtual shards as tar shards:
the fixed mode's finite corpus, and the procedural mode's validation and tokenizer-fitting files.
All randomness comes from a ``random.Random`` the caller seeds, so the same seed
gives the same bytes. Layering: imports nothing else from ``mot_lightning``; the data layer
registers ``virtual.samples`` with the shard reader (``shards/reader.py``) to serve ``world://`` URLs.
"""
