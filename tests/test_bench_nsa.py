"""The NSA benchmark's branch-by-branch forward, on the CPU under the Triton interpreter."""
import os

import pytest

os.environ["TRITON_INTERPRET"] = "1"          # before any triton-dependent import
pytest.importorskip("triton", reason="triton is not installed")

import torch  # noqa: E402

from sparsa.bench.nsa import forward_branches, nsa_inputs  # noqa: E402
from sparsa.ops.nsa import NSAConfig, nsa_attention_ref  # noqa: E402

from ._util import rel_err  # noqa: E402


@pytest.mark.parametrize("h,hkv", [(4, 1), (4, 2)])
def test_forward_branches_make_the_full_forward(h, hkv):
    cfg = NSAConfig(block=16, stride=8, sel_block=16, n_select=3, window=24)
    shape = {"batch": 1, "heads": h, "kv_heads": hkv, "head_dim": 32}
    q, k, v, gates, _ = nsa_inputs(70, shape, device="cpu", dtype=torch.float32, seed=2)
    fb = forward_branches(q, k, v, gates, cfg, scale=32 ** -0.5, interpreted=True)
    ref = nsa_attention_ref(q, k, v, gates, cfg)
    assert rel_err(fb["out"], ref) < 1e-4
    assert fb["idx"].shape[:3] == (1, hkv, 70) and fb["kc"].shape[2] == cfg.n_compressed(70)
    g = gates.unsqueeze(-1)
    mixed = g[..., 0, :] * fb["o_c"] + g[..., 1, :] * fb["o_s"] + g[..., 2, :] * fb["o_w"]
    assert rel_err(mixed, fb["out"]) < 1e-5
    for name in ("lse_c", "lse_w", "lse_s"):   # lse_c is +inf on rows before the first compressed token
        assert fb[name].shape == (1, h, 70)
    assert torch.isfinite(fb["lse_w"]).all() and torch.isfinite(fb["lse_s"]).all()


def test_plot_shows_the_latest_run(tmp_path):
    import json

    from sparsa.bench.nsa import plot_svg

    def row(pass_, speedup, run):
        return {"bench": "nsa", "method": "nsa", "pass": pass_, "context": 65536, "compression": 9.0,
                "shape": {"batch": 1, "heads": 64, "kv_heads": 4, "head_dim": 128}, "params": {},
                "ms": 1.0, "baseline": "sdpa_cudnn", "baseline_ms": speedup, "speedup": speedup,
                "metrics": {"run": run}}
    data = {"device": "dev", "torch": "t", "triton": "tr", "created": "2026-01-02",
            "runs": {"run1": "2026-01-01", "run2": "2026-01-02"},
            "rows": [row("fwd", 1.5, "run1"), row("bwd", 1.1, "run1"), row("fwd", 2.5, "run2")]}
    path = tmp_path / "nsa.json"
    path.write_text(json.dumps(data))
    plot_svg(path, tmp_path / "nsa.svg")
    svg = (tmp_path / "nsa.svg").read_text()
    assert svg.count("<rect") == 1 and "2.50x" in svg and "1.50x" not in svg
    del data["runs"]
    path.write_text(json.dumps(data))
    plot_svg(path, tmp_path / "nsa.svg")
    assert (tmp_path / "nsa.svg").read_text().count("<rect") == 3
