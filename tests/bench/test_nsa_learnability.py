"""benchmarks/nsa_learnability.py on hand-written training logs."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("nsa_learnability", ROOT / "benchmarks" / "nsa_learnability.py")
nl = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(nl)


def _log(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 30, "lo')   # torn last line
    return path


def test_reads_curves_and_quick_evaluations(tmp_path):
    p = _log(tmp_path / "a.jsonl", [
        {"step": 10, "tokens": 100, "loss": 3.0, "answer_loss": 2.5, "teacher_forced_exact": {"niah_single": 0.0}},
        {"step": 20, "tokens": 200, "loss": 2.0, "answer_loss": 1.5, "teacher_forced_exact": {"niah_single": 0.5}},
        {"step": 20, "event": "quick_eval", "length": 960, "scores": {"niah_single": 0.75}},
        {"step": 20, "event": "stopped", "reason": "time_limit"},
    ])
    r = nl.read_run(p)
    assert r["steps"] == 20 and r["tokens"] == 200
    assert r["answer_loss"] == [[100, 2.5], [200, 1.5]]
    assert r["teacher_forced_exact"][-1] == [200, {"niah_single": 0.5}]
    assert r["quick_eval"] == [{"step": 20, "length": 960, "scores": {"niah_single": 0.75}, "tokens": 200}]


def test_main_writes_json_and_plot(tmp_path):
    p = _log(tmp_path / "a.jsonl", [{"step": 10, "tokens": 100, "loss": 3.0, "answer_loss": 2.5},
                                    {"step": 10, "event": "quick_eval", "length": 960,
                                     "scores": {"niah_single": 0.25}}])
    out, png = tmp_path / "o.json", tmp_path / "o.png"
    nl.main([str(out), f"dense={p}", f"nsa={p}", "--plot", str(png), "--device", "cpu"])
    res = json.loads(out.read_text())
    assert set(res["runs"]) == {"dense", "nsa"} and res["device"] == "cpu"
    assert png.stat().st_size > 0


def test_run_spec_without_name_is_refused(tmp_path):
    with pytest.raises(SystemExit):
        nl.main([str(tmp_path / "o.json"), str(tmp_path / "a.jsonl")])
