"""Statistics over sweep results: intervals, the paired exact McNemar test, per-cell summaries
and the maximum tolerable compression of each method.

Result rows are JSON objects, one per (cell, sample), with the fields listed in ``ROW_FIELDS``.
A *cell* is (model, task, length, method, phase, target, mode). ``phase`` is part of the key
because one method name (e.g. ``streaming``) can run in either phase; for a given method and
phase the cell is the (model, task, length, method, target, mode) of the sweep. Dense rows
(``method == "dense"``) are the paired baseline of every cell with the same
(model, task, length, mode), matched on ``sample``.

Intervals:

- exact match (a proportion): Wilson score interval;
- mean partial credit: percentile bootstrap of the mean (resampling samples with replacement,
  2,000 resamples, fixed seed, so the same rows always give the same interval).
"""
from __future__ import annotations

import json
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

Row = dict[str, Any]

ROW_FIELDS: tuple[str, ...] = ("model", "task", "length", "sample", "method", "phase", "target",
                               "compression", "mode", "score", "exact")
"""Fields a result row must have (others, e.g. ``answer`` or ``seconds``, are optional here)."""

DENSE = "dense"
ALPHA = 0.05
Z95 = 1.959963984540054  # two-sided 95% standard normal quantile

MAX_TOLERABLE_RULE = (
    "Maximum tolerable compression of a method, per (model, task, length, mode): walk the method's "
    "cells in increasing achieved compression (cells at compression 1 included) and stop at the first "
    "cell whose exact-match is significantly below dense (exact two-sided McNemar test on the samples "
    "both have, alpha 0.05, and the method wrong on more discordant pairs than dense); the answer is "
    "the largest achieved compression before that stop, so every lower compression also holds "
    "(monotonic: a lucky pass at a high ratio after a failure at a lower one does not count). "
    "None if the lowest-compression cell is already worse. Cells with no dense-paired sample are "
    "not tested and are skipped; with no dense baseline at all there is no answer (n/a). A cell "
    "where dense is exact on so few paired samples that even losing all of them could not reach "
    "p < alpha (fewer than 6 when alpha is 0.05) cannot show a drop, so it cannot show that compression "
    "holds either: it is skipped, and a method with only such cells is untestable."
)


# --------------------------------------------------------------------------- statistics

def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a proportion ``successes / n`` (default 95%).

    Returns ``(low, high)`` in [0, 1]; ``(0.0, 1.0)`` when ``n == 0`` (no information).
    """
    if n < 0 or successes < 0 or successes > n:
        raise ValueError(f"successes, n: need 0 <= successes <= n, got successes={successes}, n={n}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    z2 = z * z
    denom = 1.0 + z2 / n
    center = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    return max(0.0, center - half), min(1.0, center + half)


def mean_interval(values: Sequence[float], level: float = 0.95, n_boot: int = 2000,
                  seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap interval for the mean of ``values`` (e.g. partial-credit scores).

    ``n_boot`` resamples of ``len(values)`` items with replacement from a generator seeded
    ``seed``; returns the ``(1-level)/2`` and ``(1+level)/2`` percentiles of the resampled means.
    One value gives ``(v, v)``; no values is a ``ValueError``.
    """
    x = np.asarray(list(values), dtype=np.float64)
    if x.size == 0:
        raise ValueError("values: need at least one value")
    if not 0 < level < 1:
        raise ValueError(f"level: must be in (0, 1), got {level}")
    if n_boot < 1:
        raise ValueError(f"n_boot: must be >= 1, got {n_boot}")
    if x.size == 1 or np.all(x == x[0]):
        return float(x[0]), float(x[0])
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def mcnemar_exact(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value for paired binary outcomes.

    ``b`` and ``c`` are the discordant counts (baseline right / method wrong, and the reverse).
    Under the null each discordant pair goes either way with probability 1/2, so
    ``p = min(1, 2 * P(X <= min(b, c)))`` with ``X ~ Binomial(b + c, 1/2)``; ``p = 1`` when
    ``b + c == 0``. Exact integer arithmetic (no normal approximation, no scipy).
    """
    if b < 0 or c < 0 or int(b) != b or int(c) != c:
        raise ValueError(f"b, c: must be non-negative integers, got b={b}, c={c}")
    b, c = int(b), int(c)
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1))
    return min(1.0, 2 * tail / 2 ** n)


# --------------------------------------------------------------------------- reading rows

class CellKey(NamedTuple):
    """Identity of one sweep cell; ``target`` is None for dense and paper-default budgets."""

    model: str
    task: str
    length: int
    method: str
    phase: str
    target: float | None
    mode: str


class GroupKey(NamedTuple):
    """The cells of one method compared with dense at one (model, task, length, mode)."""

    model: str
    task: str
    length: int
    method: str
    phase: str
    mode: str


def _check_row(row: Any, where: str) -> Row:
    if not isinstance(row, dict):
        raise ValueError(f"{where}: a result row must be a JSON object, got {type(row).__name__}")
    missing = [f for f in ROW_FIELDS if f not in row]
    if missing:
        raise ValueError(f"{where}: result row lacks field(s) {missing}")
    try:
        score = float(row["score"])
        exact = row["exact"]
        if exact not in (0, 1) or not (0.0 <= score <= 1.0):
            raise ValueError
        compression = float(row["compression"])
        if not (math.isfinite(compression) and compression > 0):
            raise ValueError
        int(row["length"]), int(row["sample"])
    except (TypeError, ValueError):
        raise ValueError(f"{where}: need score in [0, 1], exact 0 or 1, a positive finite compression, integer "
                         f"length and sample; got score={row.get('score')!r}, exact={row.get('exact')!r}, "
                         f"compression={row.get('compression')!r}, length={row.get('length')!r}, "
                         f"sample={row.get('sample')!r}") from None
    return row


def read_jsonl(path: str | Path) -> list[Row]:
    """Rows of one JSON-lines results file, in file order.

    A last line that is not valid JSON (a write interrupted mid-line) is skipped with a
    ``UserWarning``; an invalid line anywhere else is a ``ValueError`` naming file and line.
    Rows lacking ``ROW_FIELDS`` are a ``ValueError`` too.
    """
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise ValueError(f"{p}: not a text file of JSON lines (it is not UTF-8)") from None
    last = max((i for i, ln in enumerate(lines) if ln.strip()), default=-1)
    rows = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            if i == last:
                warnings.warn(f"{p}: line {i + 1} is incomplete (a torn, interrupted write); skipped", stacklevel=2)
                break
            raise ValueError(f"{p}: line {i + 1} is not valid JSON ({e.msg})") from None
        rows.append(_check_row(obj, f"{p}: line {i + 1}"))
    return rows


def result_files(source: str | Path | Sequence[str | Path]) -> list[Path]:
    """The JSON-lines files of ``source``: a results directory (every ``rows*.jsonl`` in it, sorted by
    name, e.g. ``rows.rank0.jsonl``, ``rows.rank1.jsonl``), one file, or a list of files/directories."""
    items = [source] if isinstance(source, (str, Path)) else list(source)
    files: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            # rows*.jsonl only: a sweep directory also holds errors.rank<R>.jsonl, a log of failed cells
            files.extend(sorted(p.glob("rows*.jsonl")))
        elif p.is_file():
            files.append(p)
        else:
            raise ValueError(f"results: {p} does not exist")
    if not files:
        raise ValueError(f"results: no *.jsonl result files (rows*.jsonl in a directory) found in {', '.join(str(i) for i in items)}")
    return files


def cell_key(row: Mapping[str, Any]) -> CellKey:
    """The cell a row belongs to (targets normalised to float so 10 and 10.0 are one cell)."""
    t = row.get("target")
    return CellKey(str(row["model"]), str(row["task"]), int(row["length"]), str(row["method"]),
                   str(row["phase"]), None if t is None else float(t), str(row["mode"]))


def dedupe_rows(rows: Iterable[Row]) -> list[Row]:
    """One row per (cell, sample): the last occurrence wins (a resumed run rewrote it)."""
    out: dict[tuple, Row] = {}
    for r in rows:
        k = (*cell_key(r), int(r["sample"]))
        out.pop(k, None)  # re-insert so the result keeps the order of last occurrence
        out[k] = r
    return list(out.values())


def load_rows(source: str | Path | Sequence[str | Path]) -> list[Row]:
    """Read, validate and dedupe result rows from a directory, file or list (see ``result_files``).

    Files are read in sorted order and later rows replace earlier ones for the same (cell, sample).
    ``ValueError`` when nothing is found or no file holds a row.
    """
    rows: list[Row] = []
    files = result_files(source)
    skipped: list[str] = []
    for f in files:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            rows.extend(read_jsonl(f))
        for w in caught:
            skipped.append(str(w.message))
            warnings.warn(w.message, w.category, stacklevel=2)
    if not rows:
        why = f" ({'; '.join(skipped)})" if skipped else ""
        raise ValueError(f"results: no result rows in {', '.join(str(f) for f in files)}{why}")
    return dedupe_rows(rows)


# --------------------------------------------------------------------------- cell summaries

@dataclass(frozen=True)
class CellSummary:
    """Statistics of one cell. Scores are fractions in [0, 1]; compression is the achieved
    model-wide ratio (dense pairs / pairs computed, or context / KV tokens read), 1 for dense.

    Paired fields compare with dense on the samples both have (None for dense cells):
    ``b`` = dense exact and method not, ``c`` = method exact and dense not, ``p_value`` the exact
    McNemar p, ``worse`` = b > c, ``significantly_worse`` = worse and p < alpha.
    """

    model: str
    task: str
    length: int
    method: str
    phase: str
    target: float | None
    mode: str
    n: int
    score: float
    score_ci: tuple[float, float]
    exact: float
    exact_ci: tuple[float, float]
    compression: float
    seconds: float | None
    n_paired: int | None = None
    dense_exact_paired: float | None = None
    exact_paired: float | None = None
    dense_score_paired: float | None = None
    score_paired: float | None = None
    b: int | None = None
    c: int | None = None
    p_value: float | None = None
    worse: bool | None = None
    significantly_worse: bool | None = None

    @property
    def key(self) -> CellKey:
        return CellKey(self.model, self.task, self.length, self.method, self.phase, self.target, self.mode)

    @property
    def group(self) -> GroupKey:
        return GroupKey(self.model, self.task, self.length, self.method, self.phase, self.mode)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _discordant(pairs: Sequence[tuple[Row, Row]]) -> tuple[int, int]:
    """(b, c) of paired rows (first, second): samples exact only in the first / only in the second."""
    b = sum(1 for x, y in pairs if int(x["exact"]) == 1 and int(y["exact"]) == 0)
    c = sum(1 for x, y in pairs if int(x["exact"]) == 0 and int(y["exact"]) == 1)
    return b, c


def summarize_cells(rows: Iterable[Row], alpha: float = ALPHA, seed: int = 0) -> list[CellSummary]:
    """Per-cell summaries of (deduplicated) rows, sorted by (model, length, mode, task, method,
    phase, achieved compression). ``alpha`` is the significance level of the paired test,
    ``seed`` the bootstrap seed."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha: must be in (0, 1), got {alpha}")
    rows = dedupe_rows(_check_row(r, f"row {i}") for i, r in enumerate(rows))
    cells: dict[CellKey, dict[int, Row]] = {}
    dense: dict[tuple, Row] = {}
    for r in rows:
        k = cell_key(r)
        cells.setdefault(k, {})[int(r["sample"])] = r
        if k.method == DENSE:
            dense[(k.model, k.task, k.length, k.mode, int(r["sample"]))] = r
    out = []
    for k, by_sample in cells.items():
        rs = [by_sample[s] for s in sorted(by_sample)]
        scores = [float(r["score"]) for r in rs]
        exact = [int(r["exact"]) for r in rs]
        secs = [float(r["seconds"]) for r in rs if isinstance(r.get("seconds"), (int, float))]
        fields: dict[str, Any] = dict(
            n=len(rs), score=float(np.mean(scores)), score_ci=mean_interval(scores, seed=seed),
            exact=sum(exact) / len(exact), exact_ci=wilson_interval(sum(exact), len(exact)),
            compression=float(np.mean([float(r["compression"]) for r in rs])),
            seconds=float(np.mean(secs)) if secs else None)
        if k.method != DENSE:
            pairs = [(dense[(k.model, k.task, k.length, k.mode, s)], by_sample[s]) for s in sorted(by_sample)
                     if (k.model, k.task, k.length, k.mode, s) in dense]
            b, c = _discordant(pairs)
            p = mcnemar_exact(b, c)
            np_ = len(pairs)
            fields.update(
                n_paired=np_, b=b, c=c, p_value=p, worse=b > c, significantly_worse=(b > c and p < alpha),
                dense_exact_paired=(sum(int(d["exact"]) for d, _ in pairs) / np_) if np_ else None,
                exact_paired=(sum(int(m["exact"]) for _, m in pairs) / np_) if np_ else None,
                dense_score_paired=float(np.mean([float(d["score"]) for d, _ in pairs])) if np_ else None,
                score_paired=float(np.mean([float(m["score"]) for _, m in pairs])) if np_ else None)
        out.append(CellSummary(*k, **fields))
    out.sort(key=lambda s: (s.model, s.length, s.mode, s.task, s.method != DENSE, s.method, s.phase,
                            s.compression, -1.0 if s.target is None else s.target))
    return out


# --------------------------------------------------------------------------- max tolerable compression

@dataclass(frozen=True)
class MaxTolerable:
    """Maximum tolerable compression of one method at one (model, task, length, mode).

    ``compression`` is None when no cell qualifies; ``reason`` then says why ("significantly
    worse from ...", "no dense baseline" or "untestable: ..."). ``n_cells`` counts the method's
    cells, ``n_tested`` those with dense-paired samples, ``n_powered`` those among them where
    dense is exact often enough for the test to be able to show a drop (:func:`can_show_drop`).
    """

    model: str
    task: str
    length: int
    method: str
    phase: str
    mode: str
    compression: float | None
    n_cells: int
    n_tested: int
    reason: str
    n_powered: int

    @property
    def group(self) -> GroupKey:
        return GroupKey(self.model, self.task, self.length, self.method, self.phase, self.mode)


def _dense_exact_count(s: CellSummary) -> int:
    return round((s.dense_exact_paired or 0.0) * (s.n_paired or 0))


def can_show_drop(cell: CellSummary, alpha: float = ALPHA) -> bool:
    """Whether the paired test of ``cell`` could ever come out significantly worse: the best case
    for a drop is the method failing every sample dense got right (b = dense's exact count, c = 0),
    whose exact McNemar p is 2 * 0.5 ** b. With dense exact on 5 samples that is 0.0625, so at
    alpha 0.05 a cell needs dense exact on at least 6 paired samples."""
    return bool(cell.n_paired) and mcnemar_exact(_dense_exact_count(cell), 0) < alpha


def max_tolerable_compression(cells: Iterable[CellSummary] | Iterable[Row],
                              alpha: float = ALPHA) -> dict[GroupKey, MaxTolerable]:
    """Apply ``MAX_TOLERABLE_RULE`` to every non-dense (model, task, length, method, phase, mode).

    ``cells`` are ``CellSummary`` objects (from ``summarize_cells``) or raw result rows, which are
    summarised first with ``alpha``. Returns a dict keyed by ``GroupKey``.
    """
    items = list(cells)
    if items and not isinstance(items[0], CellSummary):
        items = summarize_cells(items, alpha=alpha)
    groups: dict[GroupKey, list[CellSummary]] = {}
    for s in items:
        if s.method != DENSE:
            groups.setdefault(s.group, []).append(s)
    out: dict[GroupKey, MaxTolerable] = {}
    for g, cs in groups.items():
        tested = sorted((s for s in cs if s.n_paired), key=lambda s: s.compression)
        powered = [s for s in tested if can_show_drop(s, alpha)]
        best: float | None = None
        reason = "no dense baseline" if not tested else "all tested cells hold"
        if tested and not powered:
            k = max(tested, key=_dense_exact_count)
            reason = (f"untestable: dense is exact on {_dense_exact_count(k)} of {k.n_paired} paired samples, "
                      f"too few for any drop to reach p < {alpha:g}")
        for s in powered:
            if s.significantly_worse:
                reason = (f"significantly worse from compression {s.compression:.3g} "
                          f"(b={s.b}, c={s.c}, p={s.p_value:.3g})")
                break
            best = s.compression
        out[g] = MaxTolerable(*g, compression=best, n_cells=len(cs), n_tested=len(tested), reason=reason,
                              n_powered=len(powered))
    return dict(sorted(out.items()))


# --------------------------------------------------------------------------- question-aware vs question-agnostic

@dataclass(frozen=True)
class ModeComparison:
    """One (model, task, length, method, phase, target) run in both modes, on the samples both have.

    ``b`` = exact when the question is in the compressed prompt ("aware") and not when the
    context is compressed before the question arrives ("agnostic"); ``c`` the reverse; ``p_value``
    the exact McNemar p; ``agnostic_worse`` = b > c and p < alpha. Scores are fractions in [0, 1]
    over the paired samples; ``score_drop_ci`` is the 95% paired-bootstrap interval of the mean
    of (aware - agnostic) partial credit, which also sees drops that exact match cannot (a list
    task where neither mode gets every item right).
    """

    model: str
    task: str
    length: int
    method: str
    phase: str
    target: float | None
    n_paired: int
    exact_aware: float
    exact_agnostic: float
    score_aware: float
    score_agnostic: float
    score_drop_ci: tuple[float, float]
    b: int
    c: int
    p_value: float
    agnostic_worse: bool


def compare_modes(rows: Iterable[Row], alpha: float = ALPHA, seed: int = 0) -> list[ModeComparison]:
    """Paired comparison of the question-aware and question-agnostic runs of every cell run in
    both modes (dense included), sorted by (model, length, task, method, phase, target).
    ``seed``: the bootstrap seed."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha: must be in (0, 1), got {alpha}")
    by_mode: dict[tuple, dict[str, dict[int, Row]]] = {}
    for r in dedupe_rows(_check_row(r, f"row {i}") for i, r in enumerate(rows)):
        k = cell_key(r)
        cell = (k.model, k.task, k.length, k.method, k.phase, k.target)
        by_mode.setdefault(cell, {}).setdefault(k.mode, {})[int(r["sample"])] = r
    out = []
    for cell, modes in by_mode.items():
        aware, agnostic = modes.get("aware", {}), modes.get("agnostic", {})
        both = sorted(set(aware) & set(agnostic))
        if not both:
            continue
        pairs = [(aware[s], agnostic[s]) for s in both]
        b, c = _discordant(pairs)
        p = mcnemar_exact(b, c)
        n = len(pairs)
        out.append(ModeComparison(
            *cell, n_paired=n, exact_aware=sum(int(a["exact"]) for a, _ in pairs) / n,
            exact_agnostic=sum(int(g["exact"]) for _, g in pairs) / n,
            score_aware=float(np.mean([float(a["score"]) for a, _ in pairs])),
            score_agnostic=float(np.mean([float(g["score"]) for _, g in pairs])),
            score_drop_ci=mean_interval([float(a["score"]) - float(g["score"]) for a, g in pairs], seed=seed),
            b=b, c=c, p_value=p, agnostic_worse=b > c and p < alpha))
    out.sort(key=lambda m: (m.model, m.length, m.task, m.method != DENSE, m.method, m.phase,
                            -1.0 if m.target is None else m.target))
    return out


__all__ = ["ALPHA", "CellKey", "CellSummary", "DENSE", "GroupKey", "MAX_TOLERABLE_RULE", "MaxTolerable",
           "ModeComparison", "ROW_FIELDS", "can_show_drop", "cell_key", "compare_modes", "dedupe_rows", "load_rows", "max_tolerable_compression",
           "mcnemar_exact", "mean_interval", "read_jsonl", "result_files", "summarize_cells", "wilson_interval"]
