"""Hand-built result rows for the metrics and report tests."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def row(method: str = "dense", sample: int = 0, exact: int = 1, *, task: str = "niah", length: int = 8192,
        phase: str | None = None, target: float | None = None, compression: float = 1.0, mode: str = "aware",
        model: str = "tiny", score: float | None = None) -> dict[str, Any]:
    return {"model": model, "task": task, "length": length, "sample": sample, "seed": 0, "n_tokens": length,
            "method": method, "phase": phase or ("dense" if method == "dense" else "prefill"), "target": target,
            "compression": compression, "mode": mode, "metric": "exact", "answer": "a", "prediction": "a",
            "score": float(exact) if score is None else score, "exact": exact, "seconds": 0.5}


def cells_with_failures(method: str, compression: float, wrong: int, n: int = 20, **kw: Any) -> list[dict]:
    """``n`` samples of one cell, the first ``wrong`` of them not exact (dense is all exact)."""
    return [row(method, s, 0 if s < wrong else 1, compression=compression, target=round(compression), **kw)
            for s in range(n)]


def standard_rows(task: str = "niah", length: int = 8192) -> list[dict]:
    """Dense all exact on 20 samples; method ``vs`` holds at 2 and 5.1, fails at 10 (6 wrong,
    p = 0.03125), passes again at 20; method ``bad`` fails already at compression 1."""
    rows = [row("dense", s, 1, task=task, length=length) for s in range(20)]
    rows += cells_with_failures("vs", 2.0, 0, task=task, length=length)
    rows += cells_with_failures("vs", 5.1, 3, task=task, length=length)
    rows += cells_with_failures("vs", 10.2, 6, task=task, length=length)
    rows += cells_with_failures("vs", 20.3, 0, task=task, length=length)
    rows += cells_with_failures("bad", 1.0, 6, task=task, length=length)
    return rows


def write_jsonl(path: Path, rows: list[dict], torn: bool = False) -> Path:
    text = "".join(json.dumps(r) + "\n" for r in rows)
    if torn:
        text += '{"model": "tiny", "task": "ni'
    path.write_text(text)
    return path
