"""The one synthetic-media source: a small deterministic world of coloured shapes.

``scenes.py``  scenes (shape, colour, size, region, count), their PNG renders, captions,
               questions and multi-scene descriptions; the held-out colour/shape pairs;
``speech.py``  spoken captions: a built-in deterministic synthesizer, or espeak-ng;
``folders.py`` PNG / WAV / TXT folders of renders, spoken captions and descriptions
               (``mot tokenizer demo-data``, the tokenizer tests).

The demo corpus writer (``data/demo.py``) builds its shards from the same scenes.
All randomness comes from a ``random.Random`` the caller seeds, so the same seed
gives the same bytes. Imports nothing else from ``mot_lightning``.
"""
