import csv
import json

import pytest
from typer.testing import CliRunner

from sparsa.cli import app
from sparsa.eval.metrics import MAX_TOLERABLE_RULE, max_tolerable_compression, summarize_cells
from sparsa.eval.report import max_tolerable_matrix, write_report

from ._rows import row, standard_rows, write_jsonl


def _bench(path, rows, device="NVIDIA Test GPU"):
    path.write_text(json.dumps({"device": device, "rows": rows}))


def _brow(method, context, compression, speedup, pass_="fwd"):
    return {"bench": "prefill", "method": method, "pass": pass_, "shape": {"batch": 1, "heads": 4, "kv_heads": 2,
            "head_dim": 64}, "context": context, "compression": compression, "params": {"target": compression},
            "ms": 1.0, "baseline": "sdpa_cudnn", "baseline_ms": speedup, "speedup": speedup}


def test_report_files_and_heatmap_numbers(tmp_path):
    rows = standard_rows("niah") + standard_rows("vt")
    res = tmp_path / "res"
    res.mkdir()
    write_jsonl(res / "rows.rank0.jsonl", rows[: len(rows) // 2])
    write_jsonl(res / "rows.rank1.jsonl", rows[len(rows) // 2:], torn=True)
    (res / "config.json").write_text(json.dumps({"model": "tiny"}))
    out = tmp_path / "out"
    with pytest.warns(UserWarning, match="incomplete"):
        report = write_report(res, out, bench_dir=None)
    text = report.read_text()
    assert report == out / "report.md"
    for name in ("score_vs_compression_tiny_8192_aware.png", "max_tolerable_tiny_8192_aware.png",
                 "phases_tiny_8192_aware.png", "cells.csv", "max_tolerable.csv"):
        assert (out / name).stat().st_size > 0, name
    assert MAX_TOLERABLE_RULE in text
    mt = max_tolerable_compression(summarize_cells(rows))
    tasks, cols, grid = max_tolerable_matrix(mt, "tiny", 8192, "aware")
    assert tasks == ["niah", "vt"] and cols == ["bad", "vs"]
    assert [[m.compression for m in r] for r in grid] == [[None, pytest.approx(5.1)], [None, pytest.approx(5.1)]]
    assert "| niah | — | 5.1 |" in text and "| vt | — | 5.1 |" in text
    with open(out / "max_tolerable.csv") as f:
        got = {(r["task"], r["method"]): r["max_tolerable_compression"] for r in csv.DictReader(f)}
    assert {k: v and round(float(v), 9) for k, v in got.items()} == {
        ("niah", "bad"): "", ("niah", "vs"): 5.1, ("vt", "bad"): "", ("vt", "vs"): 5.1}
    assert "isoCost" not in text


def test_report_dense_only_and_single_method(tmp_path):
    write_jsonl(tmp_path / "dense.jsonl", [row("dense", s, s % 2) for s in range(6)])
    text = write_report(tmp_path / "dense.jsonl", tmp_path / "o1", bench_dir=tmp_path / "nobench").read_text()
    assert "dense only" in text and "skipped" in text
    rows = [row("dense", s, 1) for s in range(6)] + [row("m", s, 1, compression=3.0, target=3) for s in range(6)]
    write_jsonl(tmp_path / "one.jsonl", rows)
    text = write_report(tmp_path / "one.jsonl", tmp_path / "o2", bench_dir=None).read_text()
    assert "| niah | 3 |" in text
    assert (tmp_path / "o2" / "max_tolerable_tiny_8192_aware.png").exists()


def test_report_isocost(tmp_path):
    rows = standard_rows()
    write_jsonl(tmp_path / "rows.jsonl", rows)
    bench = tmp_path / "bench"
    bench.mkdir()
    _bench(bench / "prefill.json", [_brow("vs", 4096, 5.0, 2.0), _brow("vs", 16384, 5.0, 4.0),
                                    _brow("vs", 4096, 10.0, 3.0), _brow("vs", 16384, 10.0, 5.0)])
    text = write_report(tmp_path / "rows.jsonl", tmp_path / "out", bench_dir=bench).read_text()
    assert (tmp_path / "out" / "isocost_tiny_8192_aware.png").exists()
    assert "NVIDIA Test GPU" in text
    # 8192 is halfway between 4096 and 16384 in log(context): speedups 3.0 (c=5) and 4.0 (c=10)
    assert "| vs | 5 | 5.1 | 0.850 | 1 | 3 | 0.333 |" in text
    assert "| vs | 10 | 10.2 | 0.700 | 1 | 4 | 0.25 |" in text
    assert "No benchmark speed for: bad at compression 1; vs at compression 2; vs at compression 20.3" in text


def test_report_isocost_no_matching_rows(tmp_path):
    write_jsonl(tmp_path / "rows.jsonl", standard_rows())
    bench = tmp_path / "bench"
    bench.mkdir()
    _bench(bench / "x.json", [_brow("other", 4096, 5.0, 2.0), _brow("other", 16384, 5.0, 4.0)])
    text = write_report(tmp_path / "rows.jsonl", tmp_path / "out", bench_dir=bench).read_text()
    assert "skipped, no benchmark rows against sdpa_cudnn for the methods evaluated" in text


def test_report_cli(tmp_path):
    write_jsonl(tmp_path / "rows.jsonl", standard_rows())
    runner = CliRunner()
    r = runner.invoke(app, ["report", str(tmp_path), "--out", str(tmp_path / "out"), "--bench-dir", ""])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "out" / "report.md").exists()
    (tmp_path / "empty").mkdir()
    r = runner.invoke(app, ["report", str(tmp_path / "empty"), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2
    assert "error: results: no *.jsonl" in r.output and "Traceback" not in r.output


def test_modes_are_compared_on_their_common_samples(tmp_path):
    from sparsa.eval.metrics import compare_modes, mcnemar_exact

    rows = []
    for mode in ("aware", "agnostic"):
        rows += [row("dense", s, 1, mode=mode) for s in range(12)]
    # snap: exact on all 12 when aware, on the last 4 only when agnostic; partial credit 0.9 / 0.1
    rows += [row("snap", s, 1, phase="decode", target=5, compression=5.0, score=0.9) for s in range(12)]
    rows += [row("snap", s, int(s >= 8), phase="decode", target=5, compression=5.0, mode="agnostic",
                 score=0.9 if s >= 8 else 0.1) for s in range(12)]
    # list: never exact in either mode, but its partial credit drops when agnostic
    rows += [row("list", s, 0, phase="decode", target=5, compression=5.0, score=0.5) for s in range(12)]
    rows += [row("list", s, 0, phase="decode", target=5, compression=5.0, mode="agnostic", score=0.2)
             for s in range(12)]
    # aware only: no comparison; an agnostic sample without its aware twin is left out of the pairs
    rows += [row("solo", s, 1, target=5, compression=5.0) for s in range(12)]
    rows.append(row("snap", 99, 0, phase="decode", target=5, compression=5.0, mode="agnostic"))
    comps = {m.method: m for m in compare_modes(rows)}
    assert set(comps) == {"dense", "snap", "list"}
    snap = comps["snap"]
    assert (snap.n_paired, snap.b, snap.c) == (12, 8, 0)
    assert snap.p_value == pytest.approx(mcnemar_exact(8, 0)) and snap.agnostic_worse
    assert (snap.exact_aware, snap.exact_agnostic) == (1.0, 4 / 12)
    lst = comps["list"]
    assert (lst.b, lst.c, lst.agnostic_worse) == (0, 0, False)
    assert lst.score_aware - lst.score_agnostic == pytest.approx(0.3) and lst.score_drop_ci[0] > 0
    assert not comps["dense"].agnostic_worse and comps["dense"].score_drop_ci == (0.0, 0.0)

    write_jsonl(tmp_path / "rows.jsonl", rows)
    text = write_report(tmp_path / "rows.jsonl", tmp_path / "out", bench_dir=None).read_text()
    assert "## Question-aware vs question-agnostic" in text
    assert "| tiny | 8,192 | niah | snap | 5 | 12 | 1.000 / 0.333 |" in text
    with open(tmp_path / "out" / "modes.csv") as f:
        assert {r["method"] for r in csv.DictReader(f)} == {"dense", "snap", "list"}
    # one mode only: no such section
    write_jsonl(tmp_path / "aware.jsonl", [r for r in rows if r["mode"] == "aware"])
    text = write_report(tmp_path / "aware.jsonl", tmp_path / "out2", bench_dir=None).read_text()
    assert "question-agnostic" not in text.split("## Reading")[1] and not (tmp_path / "out2" / "modes.csv").exists()
