"""Resuming the prefill grid: which cells a results file already holds."""
from sparsa.bench.prefill import SHAPE, cell_key, done_cells


def row(method, context, params, shape=SHAPE):
    return {"bench": "prefill", "method": method, "pass": "fwd", "shape": dict(shape), "context": context,
            "params": params, "ms": 1.0, "baseline": "sdpa_cudnn", "baseline_ms": 2.0, "speedup": 2.0}


def test_done_cells_counts_end_to_end_rows_only():
    rows = [
        row("block_sparse", 8192, {"target": 10.0, "indices": "planned", "estimation": True}),
        row("block_sparse", 8192, {"lists": "kv_head", "indices": "random", "estimation": False}),   # kernel only
        row("vertical_slash", 8192, {"vertical": 1000, "slash": 6096, "target": None, "estimation": True}),
        row("vertical_slash", 8192, {"compression": 5.0, "target": 5.0, "estimation": False, "part": "kernel"}),
        row("streaming", 8192, {"impl": "flex", "target": 20.0}),                                     # FlexAttention row
        row("streaming", 8192, {"impl": "triton", "target": 5}),
        row("flexprefill", 32768, {"alpha": 0.9, "target": None, "estimation": True}),
        row("sdpa_flash", 8192, {}),
        row("streaming", 8192, {"impl": "triton", "target": 10.0}, shape={**SHAPE, "heads": 64}),   # other shape
    ]
    assert done_cells(rows) == {cell_key("block_sparse", 8192, 10), cell_key("vertical_slash", 8192, None),
                                cell_key("streaming", 8192, 5.0), cell_key("flexprefill", 32768, None)}
    assert cell_key("streaming", 8192, 5) == ("streaming", 8192, 5.0)
