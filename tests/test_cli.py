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
