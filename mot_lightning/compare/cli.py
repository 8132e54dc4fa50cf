"""``mot compare RUN_DIR... [--baseline RUN] [--out DIR]``: the paper's step-matching table + plots."""
from __future__ import annotations

import argparse
from pathlib import Path

from mot_lightning.compare.report import Smoothing, compare_runs, to_csv, to_markdown, to_text
from mot_lightning.compare.runs import Run, RunError, load_run, short_labels

DESCRIPTION = "The paper's step-matching comparison of training runs: a table (.md, .csv) and PNG plots."
EPILOG = """\
s_steps: first step at which the run's smoothed loss reaches the baseline's final smoothed loss,
divided by the baseline's final step (s < 1: the run is faster). s_flops / s_time: the same match
read on the cumulative-FLOPs and active wall-clock axes. ratio = final / baseline_final.
Example: mot compare runs/speech/dense runs/speech/mot --out compare_out
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mot compare", description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", metavar="RUN_DIR",
                   help="run dirs (runs/<setting>/<variant>: version_* merged) or single version_N dirs")
    p.add_argument("--baseline", help="the run to match against (default: the one whose path contains "
                   "'dense', else the first); may also be a run not in RUN_DIR")
    p.add_argument("--out", type=Path, default=Path("compare_out"), help="where table.md/.csv and PNGs go")
    p.add_argument("--smoothing", type=float, default=Smoothing.train,
                   help="EMA factor over logged points for train/ curves (default %(default)s)")
    p.add_argument("--val-smoothing", type=float, default=Smoothing.val,
                   help="EMA factor for val/ curves (default %(default)s: sparse points, unsmoothed)")
    p.add_argument("--no-plots", action="store_true", help="write only the table")
    return p


def pick_baseline(paths: list[Path], baseline: str | None) -> tuple[list[Path], int]:
    """Return the run paths (baseline added if it is new) and the baseline's index."""
    if baseline is not None:
        wanted = Path(baseline).resolve()
        for i, p in enumerate(paths):
            if p.resolve() == wanted:
                return paths, i
        return [Path(baseline), *paths], 0
    dense = [i for i, p in enumerate(paths) if "dense" in str(p)]
    return paths, (dense[0] if dense else 0)


def main(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    smoothing = Smoothing(train=args.smoothing, val=args.val_smoothing)
    for name, f in (("--smoothing", smoothing.train), ("--val-smoothing", smoothing.val)):
        if not 0.0 <= f < 1.0:
            raise SystemExit(f"mot compare: {name} must be in [0, 1), got {f}")
    paths, baseline = pick_baseline([Path(p) for p in args.runs], args.baseline)
    if len(paths) < 2:
        raise SystemExit("mot compare: need at least two runs (a baseline and one to compare)")
    try:
        runs: list[Run] = [load_run(p) for p in paths]
    except RunError as err:
        raise SystemExit(f"mot compare: {err}") from None
    labels = short_labels(paths)
    rows = compare_runs(runs, labels, baseline, smoothing)
    print(_header(runs, labels, baseline, smoothing))
    print(to_text(rows))
    _write(args.out, rows, None if args.no_plots else (runs, labels, baseline, smoothing))


def _header(runs: list[Run], labels: list[str], baseline: int, smoothing: Smoothing) -> str:
    head = (f"baseline: {labels[baseline]} (final step {runs[baseline].last_step:g}); "
            f"EMA smoothing train {smoothing.train:g}, val {smoothing.val:g}")
    lines = [head]
    for run, label in zip(runs, labels):
        if len(run.versions) > 1:
            lines.append(f"{label}: merged {len(run.versions)} versions: "
                         + ", ".join(v.name for v in run.versions))
    return "\n".join(lines)


def _write(out: Path, rows, plot_args) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(to_markdown(rows))
    (out / "table.csv").write_text(to_csv(rows))
    written = [out / "table.md", out / "table.csv"]
    if plot_args is not None:
        from mot_lightning.compare.plots import plot_all  # matplotlib only when plotting

        written += plot_all(*plot_args[:3], rows, plot_args[3], out)
    print("wrote " + ", ".join(str(p) for p in written))
