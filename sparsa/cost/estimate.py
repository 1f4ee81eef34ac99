"""GPU cost of a workload with and without sparse attention, from a speedup.

The model is deliberately simple: if dense attention needs a GPU fleet costing ``D`` dollars per
day, a method that runs the same work ``s`` times faster needs ``D / s`` dollars per day; the
saving is ``D - D / s`` per day, times 30 days per month. A speedup below 1 gives a negative
saving (the method costs more). Speedups come by hand or from benchmark results
(``benchmarks/results/*.json``, see ``sparsa.cost.bench``), which time the attention (or one
model pass) only: the estimate is only as end-to-end as the benchmark pass it uses.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

DAYS_PER_MONTH = 30
SECONDS_PER_DAY = 86_400.0


def _positive(name: str, value: float | None, *, allow_zero: bool = False) -> float:
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name}: must be a finite number, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name}: must be {'>= 0' if allow_zero else '> 0'}, got {value}")
    return float(value)


def gpu_cost_per_day(per_day: float | None = None, per_hour: float | None = None) -> float:
    """Cost of one GPU for one day in dollars, from a daily price or an hourly price (x 24).
    Exactly one of the two must be given."""
    if (per_day is None) == (per_hour is None):
        raise ValueError("gpu_cost_per_day, gpu_cost_per_hour: give exactly one of the two")
    if per_day is not None:
        return _positive("gpu_cost_per_day", per_day, allow_zero=True)
    return 24.0 * _positive("gpu_cost_per_hour", per_hour, allow_zero=True)


@dataclass(frozen=True)
class Workload:
    """Requests served per day and the dense GPU time of one request, in seconds on one GPU."""

    requests_per_day: float
    dense_seconds_per_request: float

    def __post_init__(self) -> None:
        _positive("requests_per_day", self.requests_per_day, allow_zero=True)
        _positive("dense_seconds_per_request", self.dense_seconds_per_request)

    @property
    def dense_gpu_days(self) -> float:
        """GPU-days of dense compute per day (= GPUs kept busy around the clock)."""
        return self.requests_per_day * self.dense_seconds_per_request / SECONDS_PER_DAY


def workload(requests_per_day: float, dense_seconds_per_request: float | None = None,
             output_tokens: int | None = None, dense_ms_per_output_token: float | None = None) -> Workload:
    """A ``Workload`` whose per-request dense time is ``dense_seconds_per_request`` (prompt
    processing, seconds) plus ``output_tokens * dense_ms_per_output_token / 1000`` (decode).
    At least one of the two parts must be given; ``output_tokens`` needs the per-token time."""
    if (output_tokens is None) != (dense_ms_per_output_token is None):
        raise ValueError("output_tokens, dense_ms_per_output_token: give both or neither")
    if dense_seconds_per_request is None and output_tokens is None:
        raise ValueError("requests_per_day: needs dense_seconds_per_request and/or output_tokens with "
                         "dense_ms_per_output_token (the dense GPU time of one request)")
    seconds = 0.0
    if dense_seconds_per_request is not None:
        seconds += _positive("dense_seconds_per_request", dense_seconds_per_request)
    if output_tokens is not None:
        seconds += _positive("output_tokens", output_tokens) * _positive(
            "dense_ms_per_output_token", dense_ms_per_output_token) / 1000.0
    return Workload(_positive("requests_per_day", requests_per_day, allow_zero=True), seconds)


@dataclass(frozen=True)
class CostEstimate:
    """Dense and sparse spend in dollars per day, the saving per day and per month
    (``DAYS_PER_MONTH`` days), the speedup used, and GPU-days per day when a workload was given."""

    speedup: float
    dense_per_day: float
    sparse_per_day: float
    saving_per_day: float
    saving_per_month: float
    dense_gpu_days: float | None = None
    sparse_gpu_days: float | None = None


def estimate_cost(gpu_cost_per_day: float, speedup: float, load: Workload | None = None) -> CostEstimate:
    """Daily cost dense vs sparse.

    Without ``load``, ``gpu_cost_per_day`` is the dense spend per day (one GPU, or a fleet's
    total, fully used). With ``load``, the dense spend is ``load.dense_gpu_days`` GPU-days at
    ``gpu_cost_per_day`` each. Either way sparse = dense / ``speedup`` and saving = dense - sparse.
    """
    price = _positive("gpu_cost_per_day", gpu_cost_per_day, allow_zero=True)
    s = _positive("speedup", speedup)
    gpu_days = None if load is None else load.dense_gpu_days
    dense = price if gpu_days is None else price * gpu_days
    sparse = dense / s
    return CostEstimate(speedup=s, dense_per_day=dense, sparse_per_day=sparse, saving_per_day=dense - sparse,
                        saving_per_month=(dense - sparse) * DAYS_PER_MONTH, dense_gpu_days=gpu_days,
                        sparse_gpu_days=None if gpu_days is None else gpu_days / s)


def format_usd(dollars: float) -> str:
    """Whole dollars with thousands separators: 27413.79 -> '$27,414', -5.2 -> '-$5'."""
    sign = "-" if round(dollars) < 0 else ""
    return f"{sign}${abs(dollars):,.0f}"


def describe_cost(est: CostEstimate) -> list[str]:
    """Human-readable lines for an estimate (what ``sparsa cost`` prints)."""
    lines = [f"dense:  {format_usd(est.dense_per_day)}/day",
             f"sparse: {format_usd(est.sparse_per_day)}/day (speedup {est.speedup:.3g}x)"]
    if est.dense_gpu_days is not None:
        lines.append(f"GPUs busy around the clock: dense {est.dense_gpu_days:.3g}, sparse {est.sparse_gpu_days:.3g} "
                     f"(provision {math.ceil(est.dense_gpu_days - 1e-9)} vs {math.ceil(est.sparse_gpu_days - 1e-9)})")
    if est.saving_per_day >= 0:
        lines.append(f"saving: {format_usd(est.saving_per_day)}/day, {format_usd(est.saving_per_month)}/month saved "
                     f"({DAYS_PER_MONTH} days/month)")
    else:
        lines.append(f"extra cost: {format_usd(-est.saving_per_day)}/day, {format_usd(-est.saving_per_month)}/month "
                     f"more than dense (speedup below 1)")
    return lines
