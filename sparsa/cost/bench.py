"""Speedups from benchmark results files (``benchmarks/results/*.json``, schema in BENCHMARKS.md).

A file is ``{"device": ..., "rows": [{"method", "pass", "context", "compression", "shape",
"params", "baseline", "speedup", ...}]}``; files without a ``rows`` list are ignored.

Selection, in order:

1. rows of the method against one baseline (default ``sdpa_cudnn``) with a positive speedup;
2. only complete timings: rows timing one part (``params.part``, e.g. the kernel alone) or
   leaving out the online pattern estimation (``params.estimation`` false) are dropped;
3. optional filters: card (substring of ``device``), batch, achieved compression (within a
   relative tolerance), parameter values;
4. rows are grouped into curves: one per (pass, card, configuration), a configuration being
   the shape and the parameters other than kernel launch settings; repeated measurements of one
   context are merged by their median speedup;
5. passes are tried in the order ``PASS_PREFERENCE`` (end-to-end prefill, kernel forward,
   end-to-end decode, kernel decode); the first pass with exactly one curve covering the
   requested context is used. Two or more covering curves are an error listing them, so the
   caller narrows with the filters rather than getting an average of unlike things.

Between measured contexts the speedup is interpolated linearly in log(context); outside the
measured range it is an error (no extrapolation).
"""
from __future__ import annotations

import json
import math
import statistics
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._validation import check_out_file, check_writable_dir

PASS_PREFERENCE: tuple[str, ...] = ("e2e_prefill", "fwd", "e2e_decode", "decode")
DEFAULT_BASELINE = "sdpa_cudnn"
# kernel launch settings: they pick among implementations of one configuration, they do not define it
_LAUNCH_KEYS = frozenset({"block_q", "block_k", "num_warps", "num_stages"})


@dataclass(frozen=True)
class BenchRow:
    """One measured row: ``speedup`` = baseline ms / method ms on ``device`` at ``context`` tokens."""

    file: str
    device: str
    method: str
    pass_: str
    baseline: str
    context: int
    compression: float | None
    speedup: float
    batch: int | None
    shape: tuple[tuple[str, Any], ...]
    params: tuple[tuple[str, Any], ...]

    @property
    def complete(self) -> bool:
        """False for rows that time only a part of the method's online work."""
        p = dict(self.params)
        return p.get("part") is None and p.get("estimation", True) is not False


def _freeze(d: Any) -> tuple[tuple[str, Any], ...]:
    if not isinstance(d, Mapping):
        return ()
    return tuple(sorted((str(k), json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v)
                        for k, v in d.items()))


def bench_files(bench_dir: str | Path | Sequence[str | Path]) -> list[Path]:
    """``*.json`` files of a directory (sorted), or the given files."""
    items = [bench_dir] if isinstance(bench_dir, (str, Path)) else list(bench_dir)
    out: list[Path] = []
    for item in items:
        p = Path(item)
        out.extend(sorted(p.glob("*.json")) if p.is_dir() else [p] if p.is_file() else [])
    return out


def load_bench_rows(bench_dir: str | Path | Sequence[str | Path] = "benchmarks/results") -> list[BenchRow]:
    """Every usable row of the results files under ``bench_dir`` (a directory, file or list).

    Files that are not JSON objects with a ``rows`` list, and rows without method, pass,
    baseline, an integer context and a positive finite speedup, are skipped. Missing directory
    gives an empty list.
    """
    rows: list[BenchRow] = []
    for f in bench_files(bench_dir):
        try:
            data = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            continue
        if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
            continue
        device = str(data.get("device") or "unknown card")
        for r in data["rows"]:
            if not isinstance(r, dict):
                continue
            try:
                speedup = float(r["speedup"])
                context = int(r["context"])
                method, pass_, baseline = str(r["method"]), str(r["pass"]), str(r["baseline"])
            except (KeyError, TypeError, ValueError):
                continue
            if not (math.isfinite(speedup) and speedup > 0 and context > 0):
                continue
            comp = r.get("compression")
            shape = r.get("shape") if isinstance(r.get("shape"), dict) else {}
            batch = shape.get("batch")
            rows.append(BenchRow(
                file=str(f), device=device, method=method, pass_=pass_, baseline=baseline, context=context,
                compression=float(comp) if isinstance(comp, (int, float)) else None, speedup=speedup,
                batch=int(batch) if isinstance(batch, int) else None, shape=_freeze(shape),
                params=_freeze(r.get("params"))))
    return rows


@dataclass(frozen=True)
class SpeedupCurve:
    """Median speedup per measured context for one (method, pass, baseline, card, configuration).

    ``contexts`` are sorted token counts; ``speedups`` and ``compressions`` (median achieved
    compression, None where not recorded) align with them; ``files`` are the sources.
    """

    method: str
    pass_: str
    baseline: str
    device: str
    config: str
    contexts: tuple[int, ...]
    speedups: tuple[float, ...]
    compressions: tuple[float | None, ...]
    files: tuple[str, ...]

    @property
    def label(self) -> str:
        return f"{self.method} [{self.pass_}, {self.config}] on {self.device}"

    def covers(self, context: float) -> bool:
        return self.contexts[0] <= context <= self.contexts[-1]

    def at(self, context: float) -> float:
        """Speedup at ``context`` tokens: linear in log(context) between the two nearest measured
        contexts; ``ValueError`` outside [first, last] measured context."""
        if context <= 0:
            raise ValueError(f"context: must be > 0, got {context}")
        if not self.covers(context):
            raise ValueError(f"context: {context} is outside the measured range {self.contexts[0]}.."
                             f"{self.contexts[-1]} of {self.label}; refusing to extrapolate")
        xs = self.contexts
        for i in range(len(xs)):
            if xs[i] == context:
                return self.speedups[i]
            if xs[i] > context:
                t = (math.log(context) - math.log(xs[i - 1])) / (math.log(xs[i]) - math.log(xs[i - 1]))
                return self.speedups[i - 1] + t * (self.speedups[i] - self.speedups[i - 1])
        raise AssertionError("unreachable")  # pragma: no cover


def _config_label(r: BenchRow) -> str:
    sh = dict(r.shape)
    parts = []
    if sh:
        parts.append(f"b{sh.get('batch', '?')} h{sh.get('heads', '?')}/{sh.get('kv_heads', '?')} "
                     f"d{sh.get('head_dim', '?')}")
    ps = [f"{k}={v}" for k, v in r.params if k not in _LAUNCH_KEYS]
    if ps:
        parts.append(", ".join(ps))
    return "; ".join(parts) or "default"


def available_methods(rows: Sequence[BenchRow], baseline: str = DEFAULT_BASELINE) -> list[str]:
    """Methods with at least one complete row against ``baseline``."""
    return sorted({r.method for r in rows if r.baseline == baseline and r.complete and r.method != "dense"})


def speedup_curves(rows: Sequence[BenchRow], method: str | None = None, *, baseline: str = DEFAULT_BASELINE,
                   passes: Sequence[str] | None = None, device: str | None = None, batch: int | None = None,
                   compression: float | None = None, tolerance: float = 0.1,
                   params: Mapping[str, Any] | None = None) -> list[SpeedupCurve]:
    """All curves matching the filters (see the module docstring), sorted by method, pass order,
    card and configuration. ``compression`` keeps rows whose achieved compression is within a
    factor ``1 + tolerance`` of it; ``params`` keeps rows whose parameters equal every given
    value (compared as strings, so ``{"quant": "bf16"}`` and CLI input agree; shape keys such as
    ``heads`` match too)."""
    if compression is not None and not compression > 0:
        raise ValueError(f"compression: must be > 0, got {compression}")
    if tolerance < 0:
        raise ValueError(f"tolerance: must be >= 0, got {tolerance}")
    order = list(passes) if passes else list(PASS_PREFERENCE)
    groups: dict[tuple, list[BenchRow]] = {}
    for r in rows:
        if r.baseline != baseline or not r.complete or r.pass_ not in order or r.method == "dense":
            continue
        if method is not None and r.method != method:
            continue
        if device is not None and device.lower() not in r.device.lower():
            continue
        if batch is not None and r.batch != batch:
            continue
        if compression is not None and (r.compression is None or
                                        abs(math.log(r.compression / compression)) > math.log1p(tolerance)):
            continue
        if params:
            p = {**dict(r.shape), **dict(r.params)}
            if any(k not in p or str(p[k]) != str(v) for k, v in params.items()):
                continue
        groups.setdefault((r.method, order.index(r.pass_), r.device, _config_label(r)), []).append(r)
    curves = []
    for (m, pi, dev, cfg), rs in sorted(groups.items()):
        by_ctx: dict[int, list[BenchRow]] = {}
        for r in rs:
            by_ctx.setdefault(r.context, []).append(r)
        ctxs = tuple(sorted(by_ctx))
        comps = []
        for n in ctxs:
            cs = [r.compression for r in by_ctx[n] if r.compression is not None]
            comps.append(statistics.median(cs) if cs else None)
        curves.append(SpeedupCurve(
            method=m, pass_=order[pi], baseline=baseline, device=dev, config=cfg, contexts=ctxs,
            speedups=tuple(statistics.median(r.speedup for r in by_ctx[n]) for n in ctxs),
            compressions=tuple(comps), files=tuple(sorted({r.file for r in rs}))))
    return curves


@dataclass(frozen=True)
class SpeedupLookup:
    """A speedup at one context and the curve it came from."""

    speedup: float
    context: int
    curve: SpeedupCurve


def lookup_speedup(rows: Sequence[BenchRow], method: str, context: int, **filters: Any) -> SpeedupLookup:
    """The speedup of ``method`` at ``context`` tokens (``filters`` as in ``speedup_curves``).

    ``ValueError`` naming the argument when the method is unknown (available ones listed), the
    context is outside every measured range, or several curves fit (they are listed).
    """
    if context is None or context <= 0:
        raise ValueError(f"context: must be a positive token count, got {context!r}")
    baseline = filters.get("baseline", DEFAULT_BASELINE)
    known = available_methods(rows, baseline)
    if not rows:
        raise ValueError("bench_dir: no benchmark rows found (no results JSON with speed-up rows)")
    if not known:
        others = sorted({r.baseline for r in rows if r.baseline})
        raise ValueError(f"baseline: no complete benchmark rows against {baseline!r}; the results hold "
                         f"{', '.join(others) or 'none'}")
    if method not in known:
        raise ValueError(f"method: no complete benchmark rows for {method!r} against {baseline}; available: "
                         f"{', '.join(known)}")
    curves = speedup_curves(rows, method, **filters)
    if not curves:
        raise ValueError(f"method: no benchmark rows for {method!r} match the filters "
                         f"{ {k: v for k, v in filters.items() if v is not None} }")
    order = list(filters.get("passes") or PASS_PREFERENCE)
    for pass_ in order:
        fit = [c for c in curves if c.pass_ == pass_ and c.covers(context)]
        if len(fit) == 1:
            return SpeedupLookup(fit[0].at(context), int(context), fit[0])
        if len(fit) > 1:
            listing = "\n  ".join(f"{c.label}: compression {_fmt_comps(c)}, contexts {list(c.contexts)}"
                                  for c in fit)
            raise ValueError(f"method: {len(fit)} measured configurations of {method!r} ({pass_}) cover context "
                             f"{context}; narrow with compression / batch / device / params:\n  {listing}")
    span: dict[tuple[str, str], list[int]] = {}
    for c in curves:
        lo_hi = span.setdefault((c.pass_, c.device), [c.contexts[0], c.contexts[-1]])
        lo_hi[0], lo_hi[1] = min(lo_hi[0], c.contexts[0]), max(lo_hi[1], c.contexts[-1])
    ranges = "; ".join(f"{p} on {d}: {lo}..{hi} over {sum(1 for c in curves if (c.pass_, c.device) == (p, d))} "
                       f"configuration(s)" for (p, d), (lo, hi) in span.items())
    raise ValueError(f"context: {context} is outside the measured context range of {method!r} ({ranges}); "
                     f"refusing to extrapolate")


def describe_lookup(lk: SpeedupLookup) -> str:
    """One line saying where a looked-up speedup came from (card, pass, configuration, points)."""
    c = lk.curve
    if lk.context in c.contexts:
        how = f"measured at {lk.context}"
    else:
        hi = next(i for i, n in enumerate(c.contexts) if n > lk.context)
        how = (f"interpolated in log(context) between {c.contexts[hi - 1]} ({c.speedups[hi - 1]:.3g}x) and "
               f"{c.contexts[hi]} ({c.speedups[hi]:.3g}x)")
    return (f"speedup {lk.speedup:.3g}x vs {c.baseline} for {c.method} at context {lk.context}, {how}; "
            f"pass {c.pass_}, {c.config}; card {c.device}; from {', '.join(c.files)}")


def _fmt_comps(c: SpeedupCurve) -> str:
    vals = sorted({round(x, 2) for x in c.compressions if x is not None})
    return "/".join(f"{v:g}" for v in vals) or "not recorded"


def plot_cost_vs_context(rows: Sequence[BenchRow], gpu_cost_per_day: float, path: str | Path,
                         methods: Sequence[str] | None = None, **filters: Any) -> Path:
    """Plot dollars per day against context length (log2 axis), one line per benchmark curve
    (method x configuration), dense at ``gpu_cost_per_day``. Uses one card: ``filters["device"]``
    or the card with the most matching rows. Writes ``path`` (format from its suffix)."""
    out = Path(path)
    if out.is_dir():
        raise ValueError(f"path: {out} is a directory; give the name of the image file, e.g. {out / 'cost.png'}")
    check_out_file("path", out)
    try:
        import matplotlib  # local: defers matplotlib
    except ImportError:
        raise ValueError('path: the plot needs matplotlib, which is not installed; install it with '
                         'pip install "sparsa[eval]"') from None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # local: after choosing the Agg backend

    curves = [c for m in (methods or [None]) for c in speedup_curves(rows, m, **filters)]
    if not curves:
        raise ValueError(f"plot: no benchmark curves match methods={list(methods or [])} and filters "
                         f"{ {k: v for k, v in filters.items() if v is not None} }")
    if filters.get("device") is None:
        count: dict[str, int] = {}
        for c in curves:
            count[c.device] = count.get(c.device, 0) + len(c.contexts)
        top = max(sorted(count), key=lambda d: count[d])
        curves = [c for c in curves if c.device == top]
    fig, ax = plt.subplots(figsize=(9, 5.5))
    formats = fig.canvas.get_supported_filetypes()
    if out.suffix and out.suffix[1:].lower() not in formats:
        plt.close(fig)
        raise ValueError(f"path: {out.suffix!r} is not an image format matplotlib writes; use one of "
                         f"{', '.join('.' + f for f in sorted(formats))}")
    ax.axhline(gpu_cost_per_day, color="black", ls="--", lw=1, label="dense")
    for c in curves:
        ax.plot(c.contexts, [gpu_cost_per_day / s for s in c.speedups], marker="o", ms=3, lw=1,
                label=f"{c.method} [{c.pass_}] {c.config}"[:90])
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("$ per day (dense = GPU cost per day)")
    ax.set_title(f"Cost per day vs context, {curves[0].device}, vs {curves[0].baseline}")
    ax.legend(fontsize=6, loc="best")
    with warnings.catch_warnings():  # a crowded legend only keeps the default layout
        warnings.filterwarnings("ignore", message=".*[Tt]ight layout.*")
        fig.tight_layout()
    try:
        check_writable_dir("path", out.parent)
    except ValueError:
        plt.close(fig)
        raise
    fig.savefig(out)
    plt.close(fig)
    return out
