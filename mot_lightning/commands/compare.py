"""``mot compare GROUP... [--baseline GROUP] [--out DIR]``: groups of seeds, intervals, noise floor, plots;
``mot compare --scaling DIR... [--baseline ARM]...``: the same, size by size (``compare/scaling.py``)."""
from __future__ import annotations

import argparse
import math
from pathlib import Path

from mot_lightning.compare.diagnostics import has_diagnostics
from mot_lightning.compare.diagnostics import section as diagnostics_section
from mot_lightning.compare.groups import Group, load_group
from mot_lightning.compare.report import Smoothing, compare_groups
from mot_lightning.compare.runs import RunError, short_labels
from mot_lightning.compare.tables import to_csv, to_markdown, to_text

DESCRIPTION = ("The paper's step-matching comparison of groups of runs (seeds of one experiment), with 95% "
               "intervals over seeds and the baseline's noise floor: a table (.md, .csv) and PNG plots.")
EPILOG = """\
GROUP: a dir of runs that differ only in seed (runs/speech/mot holding s0-1a2b3c4d, s1-1a2b3c4d, ...),
a single run dir (one seed), or DIR@HASH to pick one experiment from a dir that holds several.
final: last smoothed loss, mean over seeds. ratio = candidate final / baseline final, per seed pair.
s (final): first step at which the candidate's smoothed loss reaches the baseline's final smoothed
loss, divided by the baseline's final step (s < 1: the candidate is faster); s (best): the same for
the baseline's best value, divided by the step where the baseline got there. s_flops / s_time: the
(final) match on the cumulative-FLOPs and active wall-clock axes. Seeds are paired by seed number
when both groups have the same seeds. Noise floor: the baseline's seeds against each other.
Generation metrics (val/gen/*, from the GenerationMetrics callback) follow the losses, matched in
their direction: accuracies and BLEU reach the baseline by rising to it; FID, KID, WER, CER by falling.
Where the runs logged sampling standard errors (val/gen_se/<metric>), each interval is at least
+- 1.96 x the mean's sampling SE, a difference within 1.96 x the two means' combined sampling SE reads
"within sampling error", and "samples needed" says how many samples per run would resolve it (docs/compare.md).
Diagnostics (diag/* and val/<set>/loss_image_t<k>, docs/diagnostics.md) get a section of their own in
table.md (last values, mean +- sd over seeds) and, with plots, attention_maps.png and tower_curves.png.
Example: mot compare runs/speech/mot --baseline runs/speech/dense --out compare_out

--scaling: each DIR holds arms (a sweep's runs/<name>: one sub-directory per variant), each arm runs of
several sizes (the sweep's points or grid). Runs are grouped by (arm, size), the size read from the
backbone widths each run recorded; every other arm is matched against each --baseline arm (an arm's name,
e.g. dense, or path; may be repeated) size by size on the tags matching --tags (default: validation
losses per modality). Writes scaling.md, scaling.csv, scaling.png (s and ratio against parameters and
training FLOPs, 95% intervals) and loss_vs_flops_sizes.png (every arm and size on one axis).
Example: mot compare --scaling runs/study/speech runs/study/unimodal --baseline dense --baseline image_only
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mot compare", description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("groups", nargs="+", metavar="GROUP", help="group dirs (see below); one per arm")
    p.add_argument("--baseline", action="append", help="the group to match against (default: the one whose path "
                   "contains 'dense', else the first); may also be a group not among GROUP. With --scaling: an "
                   "arm, and it may be repeated")
    p.add_argument("--scaling", action="store_true",
                   help="GROUPs are dirs of arms of several sizes: compare size by size (see below)")
    p.add_argument("--tags", default=None, help="with --scaling: a regex of the tags compared (default: "
                   "validation losses per modality)")
    p.add_argument("--out", type=Path, default=Path("compare_out"), help="where table.md/.csv and PNGs go")
    p.add_argument("--smoothing", type=float, default=Smoothing.train,
                   help="EMA factor over logged points for train/ curves (default %(default)s)")
    p.add_argument("--val-smoothing", type=float, default=Smoothing.val,
                   help="EMA factor for val/ curves (default %(default)s: sparse points, unsmoothed)")
    p.add_argument("--min-below", type=float, default=0.5,
                   help="flag a 'brief crossing' when the candidate stays at/below the target for less than "
                   "this share of its points after the first crossing (default %(default)s)")
    p.add_argument("--detect", type=float, metavar="REL",
                   help="size 'samples needed' for a relative difference REL of the baseline's mean (0.05: 5%%) "
                   "instead of the observed difference (generation metrics with sampling SEs)")
    p.add_argument("--no-plots", action="store_true", help="write only the table")
    return p


def pick_baseline(specs: list[str], baseline: str | None) -> tuple[list[str], int]:
    """Return the group specs (baseline added if it is new) and the baseline's index."""
    if baseline is not None:
        wanted = Path(baseline).resolve()
        for i, p in enumerate(specs):
            if Path(p).resolve() == wanted:
                return specs, i
        return [baseline, *specs], 0
    dense = [i for i, p in enumerate(specs) if "dense" in p]
    return specs, (dense[0] if dense else 0)


def main(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    smoothing = Smoothing(train=args.smoothing, val=args.val_smoothing)
    for name, f in (("--smoothing", smoothing.train), ("--val-smoothing", smoothing.val)):
        if not 0.0 <= f < 1.0:
            raise SystemExit(f"mot compare: {name} must be in [0, 1), got {f}")
    if args.detect is not None and not (args.detect > 0 and math.isfinite(args.detect)):
        raise SystemExit(f"mot compare: --detect is a relative difference > 0 (0.05 for 5%), got {args.detect}")
    if args.scaling:
        return scaling_main(args, smoothing)
    if args.tags is not None:
        raise SystemExit("mot compare: --tags goes with --scaling")
    if args.baseline and len(args.baseline) > 1:
        raise SystemExit("mot compare: one --baseline (several go with --scaling)")
    specs, baseline = pick_baseline(list(args.groups), args.baseline[0] if args.baseline else None)
    if len(specs) < 2:
        raise SystemExit("mot compare: need at least two groups (a baseline and one to compare)")
    labels = short_labels([Path(s.rsplit("@", 1)[0]) if "@" in Path(s).name else Path(s) for s in specs])
    labels = [lab + s[s.rindex("@"):] if "@" in Path(s).name else lab for lab, s in zip(labels, specs)]
    try:
        groups = [load_group(s, lab) for s, lab in zip(specs, labels)]
    except RunError as err:
        raise SystemExit(f"mot compare: {err}") from None
    rows = compare_groups(groups, baseline, smoothing, args.min_below, args.detect)
    header = _header(groups, baseline, smoothing, args.detect)
    print(header)
    print(to_text(rows))
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    diagnostics = diagnostics_section(groups) if has_diagnostics(groups) else ""
    (out / "table.md").write_text(to_markdown(rows, header) + ("\n" + diagnostics if diagnostics else ""))
    (out / "table.csv").write_text(to_csv(rows))
    written = [out / "table.md", out / "table.csv"]
    if not args.no_plots:
        from mot_lightning.compare.plots import plot_all  # matplotlib only when plotting

        written += plot_all(groups, baseline, smoothing, out)
        if diagnostics:
            from mot_lightning.compare.diagnostics import plot_diagnostics

            written += plot_diagnostics(groups, out)
    print("wrote " + ", ".join(str(p) for p in written))


def scaling_main(args: argparse.Namespace, smoothing: Smoothing) -> None:
    """``--scaling``: arms of several sizes, compared size by size (``compare/scaling.py``)."""
    from mot_lightning.compare import scaling

    try:
        arms = scaling.load_arms(args.groups)
        baselines = scaling.pick_baselines(arms, args.baseline)
    except RunError as err:
        raise SystemExit(f"mot compare: {err}") from None
    if len(arms) < 2:
        raise SystemExit(f"mot compare: --scaling found one arm ({arms[0].label}); need a baseline and another")
    rows = scaling.compare_arms(arms, baselines, smoothing, args.min_below, args.tags or scaling.DEFAULT_TAGS)
    if not rows:
        raise SystemExit("mot compare: no tag matching --tags was logged by a baseline arm and another arm")
    header = scaling.header(arms, baselines, smoothing)
    markdown = scaling.to_markdown(rows, header)
    print(markdown)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "scaling.md").write_text(markdown)
    (out / "scaling.csv").write_text(scaling.to_csv(rows))
    written = [out / "scaling.md", out / "scaling.csv"]
    if not args.no_plots:
        from mot_lightning.compare.scaling_plots import plot_scaling, plot_sizes  # matplotlib only when plotting

        tags = list(dict.fromkeys(r.tag for r in rows))
        written += [p for p in (plot_scaling(rows, out / "scaling.png"),
                                plot_sizes(arms, tags, smoothing, out / "loss_vs_flops_sizes.png")) if p]
    print("wrote " + ", ".join(str(p) for p in written))


def _header(groups: list[Group], baseline: int, smoothing: Smoothing, detect: float | None = None) -> str:
    lines = [f"baseline: {groups[baseline].label}; EMA smoothing train {smoothing.train:g}, val {smoothing.val:g}"
             + ("" if detect is None else f"; samples needed sized for a {detect:.3g}x difference of the baseline")]
    for g in groups:
        seeds = ", ".join("?" if s is None else str(s) for s in g.seeds)
        ident = f"config hash {g.hash}" if g.hash else "no run.json"
        lines.append(f"{g.label}: {g.n} seed{'s' if g.n > 1 else ''} ({seeds}); {ident}; "
                     f"final step {max(r.last_step for r in g.runs):g}")
        for run in g.runs:
            if len(run.versions) > 1 or run.notes:
                merged = ", ".join(v.name for v in run.versions)
                lines.append(f"  {run.path.name}: merged {len(run.versions)} versions: {merged}"
                             + "".join(f"; {n}" for n in run.notes))
    return "\n".join(lines)
