import json

import pytest
from typer.testing import CliRunner

from sparsa.cli import app
from sparsa.cost import (describe_cost, estimate_cost, format_usd, gpu_cost_per_day, load_bench_rows,
                         lookup_speedup, speedup_curves, workload)

runner = CliRunner()


def _row(method, context, speedup, pass_="fwd", compression=10.0, baseline="sdpa_cudnn", params=None, batch=1):
    return {"bench": "prefill", "method": method, "pass": pass_, "context": context, "compression": compression,
            "shape": {"batch": batch, "heads": 32, "kv_heads": 8, "head_dim": 128},
            "params": params if params is not None else {"target": 10.0}, "ms": 1.0, "baseline": baseline,
            "baseline_ms": speedup, "speedup": speedup}


@pytest.fixture
def bench(tmp_path):
    d = tmp_path / "bench"
    d.mkdir()
    (d / "a.json").write_text(json.dumps({"device": "NVIDIA H100 80GB HBM3", "rows": [
        _row("vs", 8192, 2.0), _row("vs", 32768, 4.0),
        _row("vs", 16384, 99.0, params={"target": 10.0, "part": "kernel"}),  # kernel only: ignored
        _row("vs", 16384, 50.0, baseline="sdpa_flash"),
        _row("bs", 8192, 1.5), _row("bs", 65536, 3.0), _row("bs", 65536, 9.0, compression=20.0,
                                                             params={"target": 20.0}),
        _row("nsa", 8192, 1.0, pass_="e2e_prefill", params={"layers": 4}), _row("nsa", 32768, 2.0, pass_="e2e_prefill",
                                                                                params={"layers": 4}),
        _row("nsa", 8192, 7.0), _row("nsa", 32768, 9.0)]}))
    (d / "profile.json").write_text(json.dumps({"device": "x", "kernels": {}}))  # no rows: skipped
    return d


def test_core_formula():
    e = estimate_cost(1000, 11.6)
    assert e.sparse_per_day == pytest.approx(86.2069, abs=1e-4)
    assert e.saving_per_month == pytest.approx((1000 - 1000 / 11.6) * 30)
    lines = "\n".join(describe_cost(e))
    assert "$86/day" in lines and "$27,414/month saved" in lines
    assert format_usd(1234567.4) == "$1,234,567" and format_usd(-5.2) == "-$5"
    assert "more than dense" in "\n".join(describe_cost(estimate_cost(100, 0.5)))


def test_gpu_price_and_workload():
    assert gpu_cost_per_day(per_hour=2.5) == 60.0
    assert gpu_cost_per_day(per_day=10) == 10.0
    w = workload(86_400, 1.0)
    assert w.dense_gpu_days == pytest.approx(1.0)
    w = workload(43_200, 0.5, output_tokens=100, dense_ms_per_output_token=15.0)  # 0.5 + 1.5 s per request
    e = estimate_cost(100.0, 4.0, w)
    assert e.dense_gpu_days == pytest.approx(1.0) and e.dense_per_day == pytest.approx(100.0)
    assert e.sparse_gpu_days == pytest.approx(0.25) and e.sparse_per_day == pytest.approx(25.0)


@pytest.mark.parametrize("call, name", [
    (lambda: estimate_cost(-1, 2), "gpu_cost_per_day"),
    (lambda: estimate_cost(10, 0), "speedup"),
    (lambda: estimate_cost(10, -2), "speedup"),
    (lambda: gpu_cost_per_day(1, 1), "exactly one"),
    (lambda: gpu_cost_per_day(per_hour=-3), "gpu_cost_per_hour"),
    (lambda: workload(10), "requests_per_day"),
    (lambda: workload(10, 1.0, output_tokens=5), "output_tokens"),
])
def test_bad_input(call, name):
    with pytest.raises(ValueError, match=name):
        call()


def test_interpolation_and_selection(bench):
    rows = load_bench_rows(bench)
    lk = lookup_speedup(rows, "vs", 16384)  # halfway in log(context) between 8192 (2x) and 32768 (4x)
    assert lk.speedup == pytest.approx(3.0)
    assert lk.curve.device == "NVIDIA H100 80GB HBM3" and lk.curve.pass_ == "fwd"
    assert lookup_speedup(rows, "vs", 8192).speedup == 2.0
    assert lookup_speedup(rows, "vs", 16384, baseline="sdpa_flash").speedup == 50.0
    assert lookup_speedup(rows, "nsa", 16384).speedup == pytest.approx(1.5)  # e2e_prefill preferred over fwd
    assert lookup_speedup(rows, "nsa", 16384, passes=["fwd"]).speedup == pytest.approx(8.0)
    with pytest.raises(ValueError, match="extrapolate"):
        lookup_speedup(rows, "vs", 65536)
    with pytest.raises(ValueError, match="method: .*'nope'.*available: bs, nsa, vs"):
        lookup_speedup(rows, "nope", 8192)
    with pytest.raises(ValueError, match="2 measured configurations"):
        lookup_speedup(rows, "bs", 65536)
    assert lookup_speedup(rows, "bs", 65536, compression=20).speedup == 9.0
    assert lookup_speedup(rows, "bs", 32768, compression=10).speedup == pytest.approx(2.5)
    assert len(speedup_curves(rows, "vs")) == 1


def test_cli_exact_output():
    r = runner.invoke(app, ["cost", "--gpu-cost-per-day", "1000", "--speedup", "11.6"])
    assert r.exit_code == 0, r.output
    assert "$86/day" in r.output and "$27,414/month saved" in r.output
    r = runner.invoke(app, ["cost", "--gpu-cost-per-hour", "10", "--speedup", "2"])
    assert "$240/day" in r.output and "$120/day" in r.output


def test_cli_from_benchmarks_and_plot(bench, tmp_path):
    r = runner.invoke(app, ["cost", "--gpu-cost-per-day", "300", "-m", "vs", "--context", "16384",
                            "--bench-dir", str(bench)])
    assert r.exit_code == 0, r.output
    assert "NVIDIA H100 80GB HBM3" in r.output and "speedup 3x" in r.output and "$100/day" in r.output
    assert "$6,000/month saved" in r.output
    png = tmp_path / "cost.png"
    r = runner.invoke(app, ["cost", "--gpu-cost-per-day", "300", "--plot", str(png), "--bench-dir", str(bench)])
    assert r.exit_code == 0, r.output
    assert png.stat().st_size > 0


@pytest.mark.parametrize("args, msg", [
    (["--gpu-cost-per-day", "-5", "--speedup", "2"], "--gpu-cost-per-day:"),
    (["--gpu-cost-per-day", "5", "--speedup", "0"], "speedup"),
    (["--gpu-cost-per-day", "5"], "speedup"),
    (["--gpu-cost-per-day", "5", "-m", "nope", "--context", "8192"], "available: bs, nsa, vs"),
    (["--gpu-cost-per-day", "5", "-m", "vs"], "context"),
    (["--gpu-cost-per-day", "5", "-m", "vs", "--context", "1000000"], "extrapolate"),
    (["--gpu-cost-per-day", "5", "--speedup", "2", "--dense-seconds-per-request", "1"], "--requests-per-day:"),
    # options that pick benchmark rows are not silently ignored next to a hand-given speedup
    (["--gpu-cost-per-day", "5", "--speedup", "2", "--context", "8192"], "--context: selects benchmark rows"),
    (["--gpu-cost-per-day", "5", "--speedup", "2", "--compression", "10"], "--compression: selects benchmark rows"),
    (["--gpu-cost-per-day", "5", "--speedup", "2", "--param", "layers=4"], "--param: selects benchmark rows"),
])
def test_cli_errors(bench, args, msg):
    r = runner.invoke(app, ["cost", *args, "--bench-dir", str(bench)])
    assert r.exit_code == 2, r.output
    assert "error:" in r.output and msg in r.output and "Traceback" not in r.output


@pytest.mark.parametrize("case, msg", [
    ("missing-bench-dir", "--bench-dir: .*is not a directory"),
    ("batch-zero", "'--batch'"),
    ("plot-under-file", "--plot: .*lies under a regular file"),
    ("plot-is-dir", "--plot: .*is a directory"),
    ("plot-no-matplotlib", "--plot: the plot needs matplotlib"),
    ("plot-format", "--plot: '.nope' is not an image format"),
])
def test_cli_bad_paths_and_bounds(bench, tmp_path, monkeypatch, case, msg):
    import re
    import sys

    file = tmp_path / "a-file"
    file.write_text("x")
    args = {"missing-bench-dir": ["-m", "vs", "--context", "8192", "--bench-dir", str(tmp_path / "none")],
            "batch-zero": ["-m", "vs", "--context", "8192", "--batch", "0", "--bench-dir", str(bench)],
            "plot-under-file": ["--plot", str(file / "cost.png"), "--bench-dir", str(bench)],
            "plot-is-dir": ["--plot", str(tmp_path), "--bench-dir", str(bench)],
            "plot-no-matplotlib": ["--plot", str(tmp_path / "cost.png"), "--bench-dir", str(bench)],
            "plot-format": ["--plot", str(tmp_path / "cost.nope"), "--bench-dir", str(bench)]}[case]
    if case == "plot-no-matplotlib":
        monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    if case == "plot-format":
        pytest.importorskip("matplotlib")
    r = runner.invoke(app, ["cost", "--gpu-cost-per-day", "5", *args])
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output
    assert re.search(msg, r.output), r.output
