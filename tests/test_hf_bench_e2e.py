"""The end-to-end decode benchmark's logic on a tiny bf16 model on the CPU (the GPU run uses the
same code with a Llama-3-8B-shaped model)."""
from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("transformers")

from sparsa.bench.e2e import DECODE_METHODS, run_e2e_decode_bench  # noqa: E402

from .test_hf_models import _quiet_transformers, tiny_model  # noqa: E402,F401


def test_decode_bench_rows(tmp_path) -> None:
    model = tiny_model("llama").to(torch.bfloat16)
    out = tmp_path / "e2e.json"
    rows = run_e2e_decode_bench(out, context=400, batch=2, steps=2, warmup=1, model=model, progress=False)
    assert [r["method"] for r in rows] == list(DECODE_METHODS)
    saved = json.loads(out.read_text())["rows"]
    assert len(saved) == len(rows)
    by = {r["method"]: r for r in rows}
    for r in rows:
        assert r["pass"] == "e2e_decode" and r["baseline"] == "sdpa" and r["context"] == 400
        assert r["metrics"]["finite"] and r["ms"] > 0 and r["speedup"] > 0
        assert r["shape"] == {"batch": 2, "heads": 4, "kv_heads": 2, "head_dim": 16}
    assert by["full_cache"]["metrics"]["first_logits_rel_err_vs_sdpa"] < 2e-2
    assert by["full_cache"]["compression"] == pytest.approx(1.0)
    for name in ("snapkv", "h2o", "streaming"):
        assert by[name]["compression"] > 5.0
        assert by[name]["metrics"]["memory_ratio"] > 3.0
        assert by[name]["metrics"]["storage"] == "varlen"
    assert by["quest"]["metrics"]["storage"] == "paged"
