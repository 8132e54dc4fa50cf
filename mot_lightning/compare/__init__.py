"""Step-matching comparison of groups of runs (docs/paper.md, "How results are measured").

Files, in pipeline order:
    runs.py      read TensorBoard logs of a run (its version_* of one experiment merged) -> tag -> Series
    groups.py    groups of runs: the seeds of one experiment (one config hash), refusing mixtures
    matching.py  smoothing and step matching (final and best target) on the step, FLOPs and wall-clock axes
    stats.py     means with Student-t intervals over seeds (floored by sampling error), ranges, pairing seeds,
                 samples needed
    report.py    groups against a baseline group -> rows (intervals, noise floor, flags, verdict)
    tables.py    rows -> text / Markdown / CSV
    plots.py     loss vs steps / FLOPs / time PNGs: seeds thin, group mean bold with a band
    scaling.py   ``--scaling``: arms of several sizes, grouped by the size each run recorded, compared size by size
    scaling_plots.py  s and the ratio against parameters and FLOPs; every arm and size against FLOPs
    (``mot compare GROUP... [--baseline GROUP] [--out DIR]`` is ``commands/compare.py``)

Imports only ``mot_lightning.modality``, ``mot_lightning.run_identity`` and libraries (docs/architecture.md, "Layers"),
and, when sizing runs, ``mot_lightning.model``'s parameter accounting (``scaling.backbone_params``).
"""
from mot_lightning.compare.groups import Group, load_group
from mot_lightning.compare.matching import Match, Series, first_crossing, match_curves, smooth
from mot_lightning.compare.runs import Run, RunError, load_run
from mot_lightning.compare.stats import Interval

__all__ = ["Group", "Interval", "Match", "Run", "RunError", "Series", "first_crossing", "load_group", "load_run",
           "match_curves", "smooth"]
