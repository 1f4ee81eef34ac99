from typer.testing import CliRunner

from sparsa.cli import app

runner = CliRunner()


def test_info():
    r = runner.invoke(app, ["info"])
    assert r.exit_code == 0, r.output
    assert "sliding_window" in r.output and "device:" in r.output
    r = runner.invoke(app, ["info", "--json"])
    assert r.exit_code == 0 and '"methods"' in r.output


def test_demo_small():
    r = runner.invoke(app, ["demo", "--length", "512", "--heads", "4", "--kv-heads", "2", "--compression", "4",
                            "-m", "dense", "-m", "sliding_window"])
    assert r.exit_code == 0, r.output
    lines = [ln for ln in r.output.splitlines() if ln.startswith("sliding_window")]
    achieved = float(lines[0].split()[3])
    assert 3.0 <= achieved <= 5.0


def test_demo_bad_method():
    r = runner.invoke(app, ["demo", "-m", "nope"])
    assert r.exit_code != 0
    assert "unknown method" in r.output


def test_info_says_kernels_need_cuda_on_a_cpu_machine(monkeypatch):
    import torch

    if torch.cuda.is_available():
        import pytest
        pytest.skip("a CUDA machine")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    r = runner.invoke(app, ["info"])
    assert r.exit_code == 0, r.output
    line = next(ln for ln in r.output.splitlines() if ln.startswith("kernels:"))
    assert "=yes" not in line and "none usable here" in line
    assert ("need a CUDA GPU" in line) or ("triton is not installed" in line)
    r = runner.invoke(app, ["info", "--json"])
    import json
    data = json.loads(r.output)
    assert not any(data["kernels"].values()) and data["kernels_note"]
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    line = next(ln for ln in runner.invoke(app, ["info"]).output.splitlines() if ln.startswith("kernels:"))
    assert "interpreter" in line or "triton is not installed" in line


def test_demo_explains_its_columns():
    r = runner.invoke(app, ["demo", "--length", "256", "--heads", "2", "--kv-heads", "1", "-m", "dense"])
    assert r.exit_code == 0, r.output
    assert "rel.err: relative error of the output against dense attention" in r.output
    assert r.output.index("rel.err:") < r.output.index("method ")
