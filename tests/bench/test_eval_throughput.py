"""benchmarks/eval_throughput.py on the shipped model at a tiny size: its rows and JSON."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "eval_throughput.py"


def test_rows_for_both_dense_paths_and_a_sparse_method(tmp_path):
    spec = importlib.util.spec_from_file_location("eval_throughput", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "tp.json"
    rows = mod.run("sparsa-tiny", out, length=256, samples=3, batches=[2], methods=["dense", "streaming:2"],
                   task="niah_single")
    saved = json.loads(out.read_text())
    assert saved["rows"] == rows and saved["device"] == "cpu"
    assert [r["method"] for r in rows] == ["dense (rows)", "dense (masked)", "streaming:2"]
    for r in rows:
        assert r["samples"] == 3 and r["batch"] == 2 and 0 <= r["exact"] <= 1
        assert 0 < r["with_rendering_per_s"] < r["samples_per_s"]
    # the two dense prefill paths decode the same answers
    assert rows[0]["exact"] == rows[1]["exact"]
