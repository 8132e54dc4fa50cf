"""Step-matching comparison of training runs (PAPER.md, "How results are measured").

Files, in pipeline order:
    runs.py      read TensorBoard logs of a run (all its version_* dirs merged) -> tag -> Series
    matching.py  smoothing and step matching on the step, FLOPs and wall-clock axes
    report.py    compare runs against a baseline -> rows -> text / Markdown / CSV
    plots.py     loss vs steps / FLOPs / time PNGs, one panel per modality key
    cli.py       ``mot compare RUN_DIR... [--baseline RUN] [--out DIR]``

Imports only ``mot_lightning.modality`` and libraries (DESIGN.md layers).
"""
from mot_lightning.compare.matching import Match, Series, first_crossing, match_curves, smooth
from mot_lightning.compare.runs import Run, RunError, load_run

__all__ = ["Match", "Run", "RunError", "Series", "first_crossing", "load_run", "match_curves", "smooth"]
