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
