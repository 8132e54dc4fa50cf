"""The one synthetic-media source: a small deterministic world of coloured shapes.

``scenes.py``     the fixed demo corpus' world: one group (shape, colour, size, region, count) per
                  scene, PNG renders, captions, questions and multi-scene descriptions; its held-out
                  colour/shape pairs;
``procedural.py`` the procedural world (v2): ``SceneSpec`` of 1-3 ``Group`` s in distinct regions,
                  continuous positions and sizes, more colours, shapes and backgrounds, ``render``;
``captions.py``   its captions (several frames, phrase orders, synonyms), questions, and
                  ``parse_caption``, the inverse of ``caption``;
``virtual.py``    virtual shards of the procedural world: ``world://`` URLs -> raw samples in every
                  shard layout, generated deterministically from (seed, split, kind, index);
``speech.py``     spoken captions: a built-in deterministic synthesizer, or espeak-ng;
``folders.py``    PNG / WAV / TXT folders of renders, spoken captions and descriptions
                  (``mot tokenizer demo-data``, the tokenizer tests).

The demo corpus writer (``data/demo.py``) builds its shards from the same scenes.
All randomness comes from a ``random.Random`` the caller seeds, so the same seed
gives the same bytes. Layering: imports nothing else from ``mot_lightning``; the data layer
registers ``virtual.samples`` with the shard reader (``shards/reader.py``) to serve ``world://`` URLs.
"""
