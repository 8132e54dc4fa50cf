"""Render comparison rows as a terminal table, Markdown and CSV (raw numbers, empty = undefined).

When any row's runs logged sampling SEs (``val/gen_se/<metric>``, report.py), every table gets two more
columns after the ratio: ``sampling se (base/cand)``, each group mean's sampling SE, and ``samples needed``,
the samples per run at which sampling error alone resolves the difference (``stats.SamplesNeeded``; ``x N`` is a
multiple of the current count when the runs do not say how many samples they scored). The CSV gets
``baseline_sampling_se``, ``sampling_se``, ``samples_needed`` (absolute, empty when unknown), ``samples_needed_x``
(the multiple), ``samples_now`` and ``samples_diff``. Loss rows leave them empty. Without any SE the tables are
exactly as before.
"""
from __future__ import annotations

import csv
import io
import math

from mot_lightning.compare.report import S_AXES, Row
from mot_lightning.compare.runs import is_gen_tag
from mot_lightning.compare.stats import Interval

COLUMNS = ("group", "key", "n base/cand (pairs)", "baseline final", "final", "ratio", "s (final)", "s (best)",
           "s_flops", "s_time", "verdict", "flags")
SE_COLUMNS = ("sampling se (base/cand)", "samples needed")  # inserted after "ratio" when any row has SEs
NOISE_COLUMNS = ("key", "n seeds", "final spread (max-min)", "ratio (range)", "s (range)")


def _n(row: Row) -> str:
    if row.ratio is None:
        return f"{row.n_base}/{row.n_cand}"
    return f"{row.n_base}/{row.n_cand} ({row.n_pairs} {row.pairing})"


def has_sampling_se(rows: list[Row]) -> bool:
    """Any row carries sampling SEs: the tables then show the sampling columns."""
    return any(r.sampled for r in rows)


def _columns(se: bool) -> list[str]:
    i = COLUMNS.index("ratio") + 1
    return [*COLUMNS[:i], *SE_COLUMNS, *COLUMNS[i:]] if se else list(COLUMNS)


def se_cells(row: Row) -> list[str]:
    """``base / cand`` sampling SEs and the samples needed; empty for losses, "not logged" for a metric without."""
    if row.sampled:
        return [f"{row.base_final.sampling_se:.3g} / {row.final.sampling_se:.3g}", row.samples.text()]
    return ["not logged", ""] if is_gen_tag(row.key) and row.ratio is not None else ["", ""]


def cells(row: Row, se: bool = False) -> list[str]:
    """Readable cells: ``mean [lo, hi]`` (95% t interval over seeds or seed pairs, floored by sampling error);
    ``se``: with the sampling columns."""
    extra = se_cells(row) if se else []
    if row.ratio is None:
        return [row.group, row.key, _n(row), *["n/a"] * 3, *extra, *["n/a"] * 4, "", "; ".join(row.notes)]
    return [row.group, row.key, _n(row), row.base_final.text(), row.final.text(), row.ratio.text(), *extra,
            *(row.s[a].text() for a in S_AXES), row.verdict, "; ".join(row.notes)]


def noise_cells(row: Row) -> list[str]:
    noise = row.noise
    if noise is None or noise.n_seeds < 2:
        return [row.key, str(row.n_base), "n/a (1 seed)", "n/a (1 seed)", "n/a (1 seed)"]
    s = noise.s_steps.text() if noise.s_steps is not None else "not reached"
    return [row.key, str(noise.n_seeds), f"{noise.spread:.3g}", noise.ratio.text(), s]


def _noise_rows(rows: list[Row]) -> list[Row]:
    seen, out = set(), []
    for r in rows:
        if r.key not in seen:
            seen.add(r.key)
            out.append(r)
    return out


def _fixed(table: list[list[str]]) -> str:
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in table)


def to_text(rows: list[Row]) -> str:
    """Fixed-width tables for the terminal: the comparison, then the baseline's noise floor."""
    se = has_sampling_se(rows)
    main = _fixed([_columns(se)] + [cells(r, se) for r in rows])
    noise = _fixed([list(NOISE_COLUMNS)] + [noise_cells(r) for r in _noise_rows(rows)])
    return f"{main}\n\nnoise floor (baseline seeds against each other):\n{noise}"


def _md(columns, lines) -> str:
    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    out += ["| " + " | ".join(c.replace("|", "/") for c in line) + " |" for line in lines]
    return "\n".join(out)


def to_markdown(rows: list[Row], header: str = "") -> str:
    intro = (f"{header}\n\n" if header else "") + (
        "Numbers are means over seeds (final values) or seed pairs (ratio, s) with 95% Student-t intervals "
        "[lo, hi]; `n base/cand (pairs)` is how many seeds stand behind them.\n\n")
    se = has_sampling_se(rows)
    if se:
        intro += ("Generation metrics whose runs logged a sampling SE: `sampling se` is each group mean's, "
                  "sqrt(sum se_i^2) / n; every interval is at least ± 1.96 x it; `within sampling error`: the "
                  "means differ by no more than 1.96 x sqrt(se_base^2 + se_cand^2); `samples needed`: samples per "
                  "run for sampling error alone to resolve the difference Δ at two-sided 5% with 80% power "
                  "(x N: a multiple of the current count).\n\n")
    noise = ("\n\nNoise floor: the baseline's seeds against each other (ordered pairs; mean and range, "
             "not an interval, since the pairs share runs).\n\n"
             + _md(NOISE_COLUMNS, [noise_cells(r) for r in _noise_rows(rows)]))
    return intro + _md(_columns(se), [cells(r, se) for r in rows]) + noise + "\n"


def _interval_fields(name: str, iv: Interval | None) -> dict[str, object]:
    if iv is None:
        return {name: "", f"{name}_lo": "", f"{name}_hi": "", f"{name}_n": ""}
    return {name: iv.mean, f"{name}_lo": "" if iv.lo is None else iv.lo,
            f"{name}_hi": "" if iv.hi is None else iv.hi, f"{name}_n": iv.n}


def _se_fields(row: Row) -> dict[str, object]:
    fields: dict[str, object] = dict.fromkeys(("baseline_sampling_se", "sampling_se", "samples_needed",
                                               "samples_needed_x", "samples_now", "samples_diff"), "")
    if not row.sampled:
        return fields
    fields["baseline_sampling_se"], fields["sampling_se"] = row.base_final.sampling_se, row.final.sampling_se
    need = row.samples
    if math.isfinite(need.factor):
        fields["samples_needed"] = "" if need.count is None else math.ceil(need.count)
        fields["samples_needed_x"] = need.factor
    fields["samples_now"] = "" if need.now is None else need.now
    fields["samples_diff"] = need.diff
    return fields


def csv_record(row: Row, se: bool = False) -> dict[str, object]:
    """One CSV line; ``se``: with the sampling fields (module doc)."""
    rec: dict[str, object] = {"group": row.group, "key": row.key, "n_base": row.n_base, "n_cand": row.n_cand,
                              "pairing": row.pairing}
    rec |= _interval_fields("baseline_final", row.base_final)
    rec |= _interval_fields("final", row.final)
    rec |= _interval_fields("ratio", row.ratio)
    if se:
        rec |= _se_fields(row)
    for axis in S_AXES:
        stat = row.s.get(axis)
        rec |= _interval_fields(axis, stat.interval if stat is not None and stat.reached == len(stat.values)
                                else None)
        rec[f"{axis}_reached"] = "" if stat is None else f"{stat.reached}/{len(stat.values)}"
    noise = row.noise
    ok = noise is not None and noise.n_seeds >= 2
    rec["noise_n_seeds"] = "" if noise is None else noise.n_seeds
    rec["noise_final_spread"] = noise.spread if ok else ""
    rec["noise_ratio_min"] = noise.ratio.lo if ok else ""
    rec["noise_ratio_max"] = noise.ratio.hi if ok else ""
    rec["noise_s_min"] = noise.s_steps.lo if ok and noise.s_steps is not None else ""
    rec["noise_s_max"] = noise.s_steps.hi if ok and noise.s_steps is not None else ""
    rec["verdict"], rec["note"] = row.verdict, "; ".join(row.notes)
    return rec


def to_csv(rows: list[Row]) -> str:
    """Raw numbers; an undefined value is an empty cell and the note says why."""
    se = has_sampling_se(rows)
    records = [csv_record(r, se) for r in rows]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(records[0]) if records else ["group", "key"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    return buf.getvalue()
