"""Markdown report with plots from sweep result rows (see ``sparsa.eval.metrics``).

``write_report(results, out_dir)`` reads every ``*.jsonl`` of a results directory (per-rank
files merged, duplicates resolved last-wins), summarises each cell, and writes to ``out_dir``:

- ``report.md``: per (model, length, mode) a results table (score, exact match, achieved
  compression, paired McNemar p against dense) and the maximum tolerable compression table
  (task x method), the rule text, and the figures below;
- ``score_vs_compression_<slug>.png``: score against achieved compression (log x), one panel
  per task, one line per method, dense as a horizontal reference;
- ``max_tolerable_<slug>.png``: heatmap of the maximum tolerable compression, task x method;
- ``phases_<slug>.png``: prefill methods and decode methods side by side, score averaged over
  tasks against compression;
- ``isocost_<slug>.png`` (when benchmark speeds cover the lengths): score against relative
  attention cost (1 / speedup vs dense on one card);
- ``cells.csv`` and ``max_tolerable.csv``: the numbers behind the tables and the heatmap;
- where cells ran in both modes, a question-aware vs question-agnostic section (paired McNemar
  on exact match, paired-bootstrap interval of the partial-credit drop) and ``modes.csv``.

``<slug>`` is ``<model>_<length>_<mode>`` with unsafe characters replaced by ``_``.
"""
from __future__ import annotations

import csv
import json
import math
import re
import warnings
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from .._validation import check_dir_path, check_writable_dir
from ..cost.bench import load_bench_rows, speedup_curves
from .metrics import (ALPHA, DENSE, MAX_TOLERABLE_RULE, CellSummary, GroupKey, MaxTolerable, ModeComparison,
                      compare_modes, load_rows, max_tolerable_compression, result_files, summarize_cells)

PHASE_PASSES = {"prefill": ("e2e_prefill", "fwd"), "decode": ("e2e_decode", "decode"),
                "both": ("e2e_prefill", "fwd", "e2e_decode", "decode")}
ISOCOST_TOLERANCE = 0.25  # a benchmark row stands for a cell if its compression is within 25%


def _slug(*parts: Any) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", "_".join(str(p) for p in parts)).strip("_")


def _fmt(x: float | None, spec: str = ".3g", none: str = "—") -> str:
    return none if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def _labels(cells: Sequence[CellSummary]) -> dict[tuple[str, str], str]:
    """Display name per (method, phase): the method, plus the phase where one name runs in two."""
    phases: dict[str, set[str]] = {}
    for s in cells:
        phases.setdefault(s.method, set()).add(s.phase)
    return {(s.method, s.phase): s.method if len(phases[s.method]) == 1 else f"{s.method} ({s.phase})"
            for s in cells}


def max_tolerable_matrix(maxtol: dict[GroupKey, MaxTolerable], model: str, length: int, mode: str,
                         labels: dict[tuple[str, str], str] | None = None
                         ) -> tuple[list[str], list[str], list[list[MaxTolerable | None]]]:
    """Tasks (rows), method labels (columns) and the ``MaxTolerable`` of each (None where the
    method was not run on that task) for one (model, length, mode): the heatmap's numbers."""
    sel = [m for m in maxtol.values() if (m.model, m.length, m.mode) == (model, length, mode)]
    labels = labels or {(m.method, m.phase): m.method for m in sel}
    tasks = sorted({m.task for m in sel})
    cols = sorted({labels[(m.method, m.phase)] for m in sel})
    grid: list[list[MaxTolerable | None]] = [[None] * len(cols) for _ in tasks]
    for m in sel:
        grid[tasks.index(m.task)][cols.index(labels[(m.method, m.phase)])] = m
    return tasks, cols, grid


def _mt_text(m: MaxTolerable | None) -> str:
    if m is None:
        return ""
    if m.compression is not None:
        return f"{m.compression:.3g}"
    if m.n_tested == 0:
        return "n/a"
    return "untestable" if m.n_powered == 0 else "—"


# --------------------------------------------------------------------------- plots

def require_matplotlib(what: str = "report") -> None:
    """Raise :class:`~sparsa.eval.models.MissingDependencyError` (a ``ValueError``) naming ``what``
    when matplotlib, which draws the plots, is not installed."""
    try:
        import matplotlib  # noqa: F401  local: defers matplotlib
    except ImportError:
        from .models import MissingDependencyError

        raise MissingDependencyError(f"{what}: the plots need matplotlib, which is not installed; install it "
                                     'with pip install "sparsa[eval]"') from None


def _plt():
    require_matplotlib()
    import matplotlib  # local: defers matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # local: after choosing the Agg backend

    return plt


def _plot_score_vs_compression(cells: list[CellSummary], labels: dict, path: Path, title: str) -> None:
    plt = _plt()
    tasks = sorted({s.task for s in cells})
    ncols = min(3, len(tasks))
    nrows = math.ceil(len(tasks) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.6 * nrows), squeeze=False)
    methods = sorted({labels[(s.method, s.phase)] for s in cells if s.method != DENSE})
    colors = {m: plt.cm.tab10(i % 10) for i, m in enumerate(methods)}
    for ax, task in zip(axes.flat, tasks):
        tc = [s for s in cells if s.task == task]
        xmax = 1.0
        for m in methods:
            pts = sorted((s.compression, s.score) for s in tc if s.method != DENSE and labels[(s.method, s.phase)] == m)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=4, color=colors[m], label=m)
                xmax = max(xmax, pts[-1][0])
        for s in tc:
            if s.method == DENSE:
                ax.axhline(s.score, color="black", ls="--", lw=1, label="dense")
        ax.set_xscale("log")
        ax.set_xlim(0.9, xmax * 1.2)
        ax.set_ylim(-0.03, 1.03)
        ax.set_title(task, fontsize=9)
        ax.set_xlabel("achieved compression")
        ax.set_ylabel("score")
    for ax in list(axes.flat)[len(tasks):]:
        ax.axis("off")
    handles, names = {}, []
    for ax in axes.flat:
        for h, n in zip(*ax.get_legend_handles_labels()):
            if n not in handles:
                handles[n] = h
                names.append(n)
    if names:
        fig.legend([handles[n] for n in names], names, loc="lower center", ncol=min(6, len(names)), fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 0.96))
    fig.savefig(path)
    plt.close(fig)


def _plot_heatmap(tasks: list[str], cols: list[str], grid: list[list[MaxTolerable | None]], path: Path,
                  title: str) -> None:
    plt = _plt()
    vals = np.array([[m.compression if m is not None and m.compression is not None else np.nan for m in row]
                     for row in grid], dtype=float)
    fig, ax = plt.subplots(figsize=(1.2 * len(cols) + 2.5, 0.5 * len(tasks) + 1.8))
    shown = np.where(np.isnan(vals), np.nan, np.log10(np.where(np.isnan(vals), 1.0, vals)))
    cmap = plt.cm.viridis.with_extremes(bad="#dddddd")
    im = ax.imshow(np.ma.masked_invalid(shown), cmap=cmap, aspect="auto", vmin=0.0,
                   vmax=max(1.0, float(np.nanmax(shown)) if np.isfinite(shown).any() else 1.0))
    for i, row in enumerate(grid):
        for j, m in enumerate(row):
            ax.text(j, i, _mt_text(m), ha="center", va="center", fontsize=8,
                    color="white" if m is not None and m.compression is not None else "black")
    ax.set_xticks(range(len(cols)), cols, rotation=35, ha="right", fontsize=8)
    ax.set_yticks(range(len(tasks)), tasks, fontsize=8)
    fig.colorbar(im, ax=ax, label="log10 max tolerable compression")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _task_average(cells: list[CellSummary], labels: dict) -> dict[str, list[tuple[float, float, int]]]:
    """Per method label: (geometric-mean compression, mean score, tasks) per target, over tasks."""
    acc: dict[tuple[str, float | None], list[CellSummary]] = {}
    for s in cells:
        if s.method != DENSE:
            acc.setdefault((labels[(s.method, s.phase)], s.target), []).append(s)
    out: dict[str, list[tuple[float, float, int]]] = {}
    for (lab, _), cs in acc.items():
        gm = math.exp(sum(math.log(max(s.compression, 1e-12)) for s in cs) / len(cs))
        out.setdefault(lab, []).append((gm, sum(s.score for s in cs) / len(cs), len(cs)))
    return {k: sorted(v) for k, v in sorted(out.items())}


def _plot_phases(cells: list[CellSummary], labels: dict, path: Path, title: str) -> None:
    plt = _plt()
    phases = ["prefill", "decode"] + (["both"] if any(s.phase == "both" for s in cells) else [])
    fig, axes = plt.subplots(1, len(phases), figsize=(5.2 * len(phases), 4), squeeze=False, sharey=True)
    dense = [s.score for s in cells if s.method == DENSE]
    for ax, ph in zip(axes[0], phases):
        sub = [s for s in cells if s.phase == ph]
        curves = _task_average(sub, labels)
        xmax = 1.0
        for i, (lab, pts) in enumerate(curves.items()):
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=4, color=plt.cm.tab10(i % 10), label=lab)
            xmax = max(xmax, pts[-1][0])
        if dense:
            ax.axhline(sum(dense) / len(dense), color="black", ls="--", lw=1, label="dense")
        if not curves:
            ax.text(0.5, 0.5, f"no {ph} methods", transform=ax.transAxes, ha="center", va="center")
        ax.set_xscale("log")
        ax.set_xlim(0.9, xmax * 1.2)
        ax.set_ylim(-0.03, 1.03)
        ax.set_title(f"{ph} methods", fontsize=9)
        ax.set_xlabel("achieved compression (geometric mean over tasks)")
        ax.set_ylabel("score (mean over tasks)")
        if ax.get_legend_handles_labels()[1]:
            ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# --------------------------------------------------------------------------- isoCost

def _isocost_points(cells: list[CellSummary], labels: dict, bench_rows: list, device: str
                    ) -> tuple[list[dict[str, Any]], list[str]]:
    """Per (method label, target): task-averaged score and 1/speedup at the cell's length on
    ``device``, from the benchmark curve whose compression is nearest the achieved one."""
    pts, misses = [], []
    groups: dict[tuple, list[CellSummary]] = {}
    for s in cells:
        if s.method != DENSE:
            groups.setdefault((s.method, s.phase, s.target), []).append(s)
    for (method, phase, target), cs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2] or 0.0)):
        comp = math.exp(sum(math.log(max(s.compression, 1e-12)) for s in cs) / len(cs))
        length = cs[0].length
        curves = [c for c in speedup_curves(bench_rows, method, passes=PHASE_PASSES.get(phase, PHASE_PASSES["both"]),
                                            device=device, compression=comp, tolerance=ISOCOST_TOLERANCE)
                  if c.covers(length)]
        lab = labels[(method, phase)]
        if not curves:
            misses.append(f"{lab} at compression {comp:.3g}")
            continue

        def dist(c):
            known = [x for x in c.compressions if x is not None]
            return abs(math.log(sum(known) / len(known) / comp)) if known else math.inf

        best = min(curves, key=dist)  # stable: ties keep pass preference, then configuration order
        speed = best.at(length)
        pts.append(dict(label=lab, target=target, compression=comp, score=sum(s.score for s in cs) / len(cs),
                        tasks=len(cs), speedup=speed, cost=1.0 / speed, source=f"{best.pass_}, {best.config}"))
    return pts, misses


def _plot_isocost(points: list[dict[str, Any]], dense_score: float | None, path: Path, title: str) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    by: dict[str, list[dict]] = {}
    for p in points:
        by.setdefault(p["label"], []).append(p)
    for i, (lab, ps) in enumerate(sorted(by.items())):
        ps = sorted(ps, key=lambda p: p["cost"])
        ax.plot([p["cost"] for p in ps], [p["score"] for p in ps], marker="o", ms=4, color=plt.cm.tab10(i % 10),
                label=lab)
    if dense_score is not None:
        ax.plot([1.0], [dense_score], marker="*", ms=12, color="black", ls="none", label="dense")
        ax.axvline(1.0, color="black", ls=":", lw=0.8)
    ax.set_xscale("log")
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("relative attention cost (1 / speedup vs dense, same card)")
    ax.set_ylabel("score (mean over tasks)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# --------------------------------------------------------------------------- markdown

def _results_table(cells: list[CellSummary], labels: dict) -> list[str]:
    out = ["| task | method | target | n | score [95% CI] | exact [95% CI] | compression | paired n | b / c "
           "| p (McNemar) | vs dense |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in cells:
        if s.method == DENSE:
            paired, bc, p, verdict = "", "", "", "baseline"
        else:
            paired, bc, p = str(s.n_paired), f"{s.b} / {s.c}", _fmt(s.p_value)
            verdict = ("n/a" if not s.n_paired else "**worse** (p<α)" if s.significantly_worse
                       else "lower, n.s." if s.worse else "not lower")
        out.append(f"| {s.task} | {labels[(s.method, s.phase)]} | {_fmt(s.target, 'g', 'default')} | {s.n} "
                   f"| {s.score:.3f} [{s.score_ci[0]:.3f}, {s.score_ci[1]:.3f}] "
                   f"| {s.exact:.3f} [{s.exact_ci[0]:.3f}, {s.exact_ci[1]:.3f}] | {s.compression:.3g} "
                   f"| {paired} | {bc} | {p} | {verdict} |")
    return out


def _maxtol_table(tasks: list[str], cols: list[str], grid: list[list[MaxTolerable | None]]) -> list[str]:
    out = ["| task | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for t, row in zip(tasks, grid):
        out.append(f"| {t} | " + " | ".join(_mt_text(m) for m in row) + " |")
    return out


def _modes_section(comps: list[ModeComparison], labels: dict, alpha: float) -> list[str]:
    out = ["## Question-aware vs question-agnostic", "",
           "Cells run in both modes, paired on their common samples: aware = the question is in the prompt "
           "the method compresses; agnostic = the context is compressed before the question arrives (a cache "
           "compressed once for several questions). b / c: samples exact only when aware / only when "
           f"agnostic; p: exact two-sided McNemar test, **worse** marks p < {alpha:g} with b > c. Score drop: "
           "mean aware minus agnostic partial credit with its 95% paired-bootstrap interval (an interval above "
           "0 is a drop that exact match may not see).", "",
           "| model | length | task | method | target | paired n | exact aware / agnostic "
           "| score aware / agnostic | score drop [95% CI] | b / c | p (McNemar) | agnostic |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for m in comps:
        verdict = ("**worse** (p<α)" if m.agnostic_worse else "lower, n.s." if m.b > m.c
                   else "higher" if m.c > m.b else "same")
        label = labels.get((m.method, m.phase), m.method)
        out.append(f"| {m.model} | {m.length:,} | {m.task} | {label} | {_fmt(m.target, 'g', 'default')} "
                   f"| {m.n_paired} | {m.exact_aware:.3f} / {m.exact_agnostic:.3f} "
                   f"| {m.score_aware:.3f} / {m.score_agnostic:.3f} "
                   f"| {m.score_aware - m.score_agnostic:+.3f} [{m.score_drop_ci[0]:+.3f}, {m.score_drop_ci[1]:+.3f}] "
                   f"| {m.b} / {m.c} | {_fmt(m.p_value)} | {verdict} |")
    return out + [""]


def _write_csvs(out: Path, cells: list[CellSummary], maxtol: dict[GroupKey, MaxTolerable]) -> None:
    fields = ["model", "task", "length", "mode", "method", "phase", "target", "n", "score", "score_lo",
              "score_hi", "exact", "exact_lo", "exact_hi", "compression", "seconds", "n_paired", "b", "c",
              "p_value", "significantly_worse"]
    with open(out / "cells.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(fields)
        for s in cells:
            d = s.as_dict()
            d.update(score_lo=s.score_ci[0], score_hi=s.score_ci[1], exact_lo=s.exact_ci[0], exact_hi=s.exact_ci[1])
            w.writerow(["" if d[k] is None else d[k] for k in fields])
    with open(out / "max_tolerable.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["model", "task", "length", "mode", "method", "phase", "max_tolerable_compression", "n_cells",
                    "n_tested", "n_powered", "reason"])
        for m in maxtol.values():
            w.writerow([m.model, m.task, m.length, m.mode, m.method, m.phase,
                        "" if m.compression is None else m.compression, m.n_cells, m.n_tested, m.n_powered, m.reason])


def _write_modes_csv(out: Path, comps: list[ModeComparison]) -> None:
    fields = ["model", "task", "length", "method", "phase", "target", "n_paired", "exact_aware", "exact_agnostic",
              "score_aware", "score_agnostic", "score_drop_lo", "score_drop_hi", "b", "c", "p_value", "agnostic_worse"]
    with open(out / "modes.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(fields)
        for m in comps:
            d = {**asdict(m), "score_drop_lo": m.score_drop_ci[0], "score_drop_hi": m.score_drop_ci[1]}
            w.writerow(["" if d[k] is None else d[k] for k in fields])


def _configs(files: list[Path]) -> list[tuple[Path, Any]]:
    seen, out = set(), []
    for f in files:
        c = f.parent / "config.json"
        if c in seen or not c.is_file():
            continue
        seen.add(c)
        try:
            out.append((c, json.loads(c.read_text(encoding="utf-8"))))
        except (OSError, json.JSONDecodeError) as e:
            out.append((c, f"unreadable: {e}"))
    return out


def write_report(results: str | Path | Sequence[str | Path], out_dir: str | Path,
                 bench_dir: str | Path | None = "benchmarks/results", alpha: float = ALPHA) -> Path:
    """Write ``report.md``, its figures and CSVs to ``out_dir``; returns the path of ``report.md``.

    ``results`` is a results directory (all its ``*.jsonl`` files, e.g. one per rank), a file
    or a list of them. ``bench_dir`` holds benchmark JSONs for the isoCost view (None skips it).
    ``alpha`` is the significance level of the paired test. ``ValueError`` when no rows are found.
    """
    files = result_files(results)
    check_dir_path("out_dir", out_dir)
    require_matplotlib()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rows = load_rows(files)
    notes = [str(w.message) for w in caught]
    for n in notes:
        warnings.warn(n, stacklevel=2)
    cells = summarize_cells(rows, alpha=alpha)
    maxtol = max_tolerable_compression(cells, alpha=alpha)
    labels = _labels(cells)
    out = check_writable_dir("out_dir", out_dir)
    _write_csvs(out, cells, maxtol)
    modes = compare_modes(rows, alpha=alpha)
    if modes:
        _write_modes_csv(out, modes)

    bench_rows: list = []
    if bench_dir is not None:
        bench_rows = load_bench_rows(bench_dir)

    md = ["# Sparse attention evaluation report", "",
          f"Results: {len(rows)} rows (after de-duplication) from {len(files)} file(s): "
          + ", ".join(f"`{f}`" for f in files) + ".", ""]
    if notes:
        md += ["Warnings while reading:", ""] + [f"- {n}" for n in notes] + [""]
    for path, cfg in _configs(files):
        text = json.dumps(cfg, indent=1, sort_keys=True, default=str)
        md += [f"<details><summary>{path}</summary>", "", "```json",
               text if len(text) < 4000 else text[:4000] + "\n...", "```", "</details>", ""]
    md += ["## Reading the tables", "",
           "- score: mean partial credit in [0, 1], 95% percentile-bootstrap interval (2,000 resamples, fixed seed);",
           "- exact: exact-match rate, 95% Wilson interval;",
           "- compression: mean achieved compression reported by the method (1 for dense);",
           f"- b / c: paired samples where dense is exact and the method not / the reverse; p: exact two-sided "
           f"McNemar test; **worse** marks p < {alpha:g} with b > c.",
           "", "**Maximum tolerable compression rule.** "
           + MAX_TOLERABLE_RULE.replace("alpha 0.05", f"alpha {alpha:g}"),
           "", "In the max-tolerable tables: a number is the compression; — means every tested compression "
           "(from the lowest) is significantly worse; n/a means no dense-paired samples; untestable means dense "
           "itself is exact on too few samples for any drop to be significant; blank means not run.", ""]

    iso_lines: list[str] = []
    all_points = 0
    device = None
    if bench_rows:
        methods = {s.method for s in cells if s.method != DENSE}
        count: dict[str, int] = {}
        for r in bench_rows:
            if r.method in methods and r.complete and r.baseline == "sdpa_cudnn":
                count[r.device] = count.get(r.device, 0) + 1
        device = max(sorted(count), key=lambda d: count[d]) if count else None

    for model, length, mode in sorted({(s.model, s.length, s.mode) for s in cells}):
        cs = [s for s in cells if (s.model, s.length, s.mode) == (model, length, mode)]
        slug = _slug(model, length, mode)
        head = f"{model} · {length:,} tokens · question-{mode}"
        md += [f"## {head}", ""]
        _plot_score_vs_compression(cs, labels, out / f"score_vs_compression_{slug}.png", head)
        md += [f"![score vs compression](score_vs_compression_{slug}.png)", "", "### Results", ""]
        md += _results_table(cs, labels) + [""]
        tasks, cols, grid = max_tolerable_matrix(maxtol, model, length, mode, labels)
        md += ["### Maximum tolerable compression", ""]
        if cols:
            md += _maxtol_table(tasks, cols, grid) + [""]
            _plot_heatmap(tasks, cols, grid, out / f"max_tolerable_{slug}.png", f"max tolerable compression · {head}")
            md += [f"![max tolerable compression](max_tolerable_{slug}.png)", ""]
        else:
            md += ["No sparse method was run here (dense only): nothing to compare.", ""]
        if any(s.method != DENSE for s in cs):
            _plot_phases(cs, labels, out / f"phases_{slug}.png", head)
            md += ["### Prefill vs decode methods", "",
                   "Score averaged over the tasks each (method, target) ran on, against the geometric mean of "
                   "its achieved compression.", "", f"![prefill vs decode](phases_{slug}.png)", ""]
        # isoCost
        if bench_dir is None:
            continue
        if not bench_rows:
            iso_lines.append(f"- {head}: skipped, no benchmark results (rows with a speedup) in `{bench_dir}`.")
            continue
        if device is None:
            iso_lines.append(f"- {head}: skipped, no benchmark rows against sdpa_cudnn for the methods evaluated "
                             f"({', '.join(sorted({s.method for s in cs if s.method != DENSE})) or 'dense only'}).")
            continue
        points, misses = _isocost_points(cs, labels, bench_rows, device)
        if not points:
            iso_lines.append(f"- {head}: skipped, no benchmark row on {device} covers length {length:,} at a "
                             f"compression within {ISOCOST_TOLERANCE:.0%} of the achieved one"
                             + (f" ({'; '.join(misses)})" if misses else "") + ".")
            continue
        all_points += len(points)
        dense = [s.score for s in cs if s.method == DENSE]
        _plot_isocost(points, sum(dense) / len(dense) if dense else None, out / f"isocost_{slug}.png",
                      f"isoCost · {head} · {device}")
        iso_lines += [f"### {head}", "", f"![isoCost](isocost_{slug}.png)", "",
                      "| method | target | compression | score | tasks | speedup | relative cost | benchmark |",
                      "|---|---|---|---|---|---|---|---|"]
        iso_lines += [f"| {p['label']} | {_fmt(p['target'], 'g', 'default')} | {p['compression']:.3g} "
                      f"| {p['score']:.3f} | {p['tasks']} | {p['speedup']:.3g} | {p['cost']:.3g} | {p['source']} |"
                      for p in points]
        if misses:
            iso_lines += ["", "No benchmark speed for: " + "; ".join(misses) + "."]
        iso_lines.append("")
    if modes:
        md += _modes_section(modes, labels, alpha)
    if bench_dir is not None:
        md += ["## isoCost view", ""]
        if all_points:
            md += [f"Relative attention cost = 1 / speedup against SDPA cuDNN measured on {device}, interpolated "
                   f"linearly in log(context) at each length; each point uses the benchmark configuration whose "
                   f"achieved compression is nearest the evaluated one (within {ISOCOST_TOLERANCE:.0%}). Speedups "
                   f"are of the benchmark pass named (attention kernel or model pass), not of the whole "
                   f"generation.", ""]
        md += iso_lines
    report = out / "report.md"
    report.write_text("\n".join(md).rstrip() + "\n", encoding="utf-8")
    return report


__all__ = ["max_tolerable_matrix", "require_matplotlib", "write_report"]
