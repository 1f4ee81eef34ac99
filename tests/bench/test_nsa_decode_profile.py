"""benchmarks/nsa_decode_profile.py on the CPU twins at a tiny size."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def test_profiles_both_twins(tmp_path):
    out = tmp_path / "p.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "nsa_decode_profile.py"), str(out), "--recipe",
                        str(ROOT / "recipes" / "sparsa-tiny-nsa-cpu.toml"), "--context", "128", "--steps", "2"],
                       capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(out.read_text())
    assert res["device"] == "cpu" and res["context"] == 128 and set(res["models"]) == {"dense", "nsa"}
    for m in res["models"].values():
        assert m["wall_ms"] > 0 and m["aten_ops"] > 0 and m["kernels"] == 0 and m["device_ms"] == 0
    # NSA's decode step does strictly more operator calls than dense (three branches and a gate)
    assert res["models"]["nsa"]["aten_ops"] > res["models"]["dense"]["aten_ops"]


def test_bad_arguments_are_refused(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "nsa_decode_profile.py"), str(tmp_path / "p.json"),
                        "--steps", "0"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 2 and "--steps" in r.stderr
