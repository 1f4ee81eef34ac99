"""The SDPA executor of masked attention against the float32 reference, for every prefill method;
dense-fallback flags and unreached-target warnings."""
import warnings

import pytest
import torch

import sparsa
from sparsa.methods import base
from sparsa.methods.per_head import PerHead
from sparsa.ops.dense import masked_attention, masked_attention_sdpa, sdpa_masked_active, sdpa_masked_scope
from sparsa.ops._shared import masked as masked_module
from sparsa.synthetic import synthetic_qkv

from ._util import causal_mask, explicit_attention, rel_err

# the papers' 30 forced columns and 100 forced diagonals would cover most of a 333-token prompt
FEW_FORCED = {"init_tokens": 4, "local_diagonals": 8}

# (method, params): every prefill method whose pattern is a mask, at a sparse setting
PREFILL = [
    ("dense", {}),
    ("vertical_slash", {"compression": 4.0, **FEW_FORCED}),
    ("vertical_slash", {"compression": 3.0, "exact": False, **FEW_FORCED}),
    ("block_sparse", {"compression": 3.0, "block_size": 32}),
    ("flexprefill", {"compression": 4.0, **FEW_FORCED}),
    ("flexprefill", {"min_budget": 16, **FEW_FORCED}),
    ("streaming", {"compression": 4.0, "mode": "prefill"}),
    ("streaming", {"sink": 4, "window": 40}),
    ("sliding_window", {"compression": 4.0, "global_positions": (3, 100)}),
    ("bigbird", {"compression": 3.0, "block_size": 16}),
]


def _ids(case) -> str:
    name, p = case
    return name + "".join(f"-{k}={v}" for k, v in p.items())


@pytest.fixture(scope="module", params=[(333, 333), (101, 333)], ids=["prompt", "chunk"])
def qkv(request):
    lq, lk = request.param
    return synthetic_qkv(2, 9, 3, lk, 64, q_len=lq, seed=3)


@pytest.mark.parametrize("case", PREFILL, ids=_ids)
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.bfloat16, 1e-2)], ids=["fp32", "bf16"])
def test_fast_path_matches_reference(qkv, case, dtype, tol):
    name, params = case
    q, k, v = (x.to(dtype) for x in qkv)
    ref, st_ref = sparsa.attention(q, k, v, name, backend="reference", return_stats=True, **params)
    out, st = sparsa.attention(q, k, v, name, return_stats=True, **params)
    assert out.dtype == dtype and out.shape == q.shape
    assert rel_err(out, ref) <= tol, name
    if name != "dense" and params.get("exact", True):   # short superset layouts route to dense
        assert st.compression > 1.5, "a sparse pattern"
    assert st.computed == st_ref.computed and st.dense == st_ref.dense
    assert st.compression == st_ref.compression
    assert torch.equal(st.per_head, st_ref.per_head)


def test_per_head_fast_path_matches_reference(qkv):
    q, k, v = qkv
    specs = [{"method": "streaming", "sink": 4, "window": 16}, "vertical_slash", None] * 3
    m = PerHead(heads=specs)
    ref, st_ref = m(q, k, v, backend="reference")
    out, st = m(q, k, v)
    assert rel_err(out, ref) <= 1e-4
    assert st.computed == st_ref.computed


def test_executor_choice(monkeypatch):
    q, k, v = synthetic_qkv(1, 2, 1, 65, 64, seed=0)
    calls = []
    real = masked_module.masked_attention_sdpa

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(masked_module, "masked_attention_sdpa", spy)
    sparsa.attention(q, k, v, "block_sparse", compression=2.0, block_size=16)
    assert calls, "auto on the CPU runs the SDPA executor"
    calls.clear()
    sparsa.attention(q, k, v, "block_sparse", compression=2.0, block_size=16, backend="sdpa")
    assert calls
    calls.clear()
    sparsa.attention(q, k, v, "block_sparse", compression=2.0, block_size=16, backend="reference")
    assert not calls, "backend='reference' runs the float32 spec"
    monkeypatch.setenv("SPARSA_BACKEND", "reference")
    sparsa.attention(q, k, v, "block_sparse", compression=2.0, block_size=16)
    assert not calls
    assert not sdpa_masked_active()
    with pytest.raises(ValueError, match="^backend"):
        sparsa.attention(q, k, v, "dense", backend="fast")


@pytest.mark.parametrize("mask_heads", ["heads", "kv_heads", "one"])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)], ids=["fp32", "bf16"])
def test_executor_on_random_masks_with_empty_rows(mask_heads, dtype, tol):
    g = torch.Generator().manual_seed(5)
    b, h, hkv, lq, lk = 2, 9, 3, 77, 131
    q = torch.randn(b, h, lq, 64, generator=g).to(dtype)
    k = torch.randn(b, hkv, lk, 64, generator=g).to(dtype)
    v = torch.randn(b, hkv, lk, 64, generator=g).to(dtype)
    hm = {"heads": h, "kv_heads": hkv, "one": 1}[mask_heads]
    full = torch.rand(b, hm, lq, lk, generator=g) < 0.2
    full[:, :, 5] = False                       # a row that sees nothing
    full[:, :, 9, :3] = True                    # a row that sees only the first keys

    def mask_fn(s, e):
        return full[:, :, s:e]

    ref, pairs_ref = masked_attention(q, k, v, mask_fn)
    out, pairs = masked_attention_sdpa(q, k, v, mask_fn, chunk=13)
    assert torch.equal(pairs, pairs_ref)
    assert rel_err(out, ref) <= tol
    assert torch.all(out[:, :, 5] == 0) and torch.isfinite(out).all()
    expanded = full if hm == h else full.repeat_interleave(h // hm, 1)
    assert rel_err(out, explicit_attention(q.float(), k.float(), v.float(), expanded)) <= tol


def test_scope_restores_previous_state():
    assert not sdpa_masked_active()
    with sdpa_masked_scope():
        assert sdpa_masked_active()
        with sdpa_masked_scope(False):
            assert not sdpa_masked_active()
        assert sdpa_masked_active()
    assert not sdpa_masked_active()


@pytest.mark.parametrize("lq,lk", [(1, 1), (1, 40), (40, 40), (17, 40)])
def test_dense_fast_path_short_and_chunked(lq, lk):
    q, k, v = synthetic_qkv(2, 6, 2, lk, 64, q_len=lq, seed=1)
    out = sparsa.attention(q, k, v)
    assert rel_err(out, explicit_attention(q, k, v, causal_mask(lq, lk))) <= 1e-5


@pytest.mark.parametrize("name", ["vertical_slash", "block_sparse", "flexprefill", "streaming", "sliding_window",
                                  "bigbird"])
def test_compression_one_equals_dense_on_fast_path(name):
    q, k, v = synthetic_qkv(2, 9, 3, 201, 64, seed=4)
    dense = sparsa.attention(q, k, v, "dense", backend="reference")
    out, st = sparsa.attention(q, k, v, name, compression=1.0, return_stats=True)
    assert rel_err(out, dense) <= 1e-5
    assert st.compression == pytest.approx(1.0)


# ------------------------------------------------------------------------------ dense fallback

def test_superset_dense_route_is_flagged():
    q, k, v = synthetic_qkv(1, 4, 2, 1000, 64, seed=0, strength=0.0)
    # a few hundred scattered diagonals: their 64-key tiles cover most of the causal matrix
    out, st = sparsa.attention(q, k, v, "vertical_slash", vertical=30, slash=400, exact=False, return_stats=True)
    assert st.info["dense_fallback"] is True
    assert st.compression == 1.0 and torch.all(st.per_head == 1.0)
    assert rel_err(out, sparsa.attention(q, k, v, "dense")) <= 1e-5
    _, exact = sparsa.attention(q, k, v, "vertical_slash", vertical=30, slash=400, return_stats=True)
    assert exact.info["dense_fallback"] is False and exact.compression > 1.0


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.bfloat16, 1e-2)], ids=["fp32", "bf16"])
def test_superset_without_route_is_not_flagged(dtype, tol):
    q, k, v = (x.to(dtype) for x in synthetic_qkv(2, 9, 3, 1001, 64, seed=0))
    params = {"vertical": 30, "slash": 100, "exact": False}
    out, st = sparsa.attention(q, k, v, "vertical_slash", return_stats=True, **params)
    assert st.info["dense_fallback"] is False and st.compression > 1.5
    ref, st_ref = sparsa.attention(q, k, v, "vertical_slash", return_stats=True, backend="reference", **params)
    assert rel_err(out, ref) <= tol and st.computed == st_ref.computed


@pytest.mark.parametrize("name", ["dense", "block_sparse", "flexprefill", "sliding_window", "bigbird"])
def test_every_prefill_method_reports_the_flag(name):
    q, k, v = synthetic_qkv(1, 2, 1, 300, 64, seed=0)
    params = {} if name == "dense" else {"compression": 2.0}
    params.update({"block_sparse": {"block_size": 16}, "bigbird": {"block_size": 16},
                   "flexprefill": FEW_FORCED}.get(name, {}))
    _, st = sparsa.attention(q, k, v, name, return_stats=True, **params)
    assert st.info["dense_fallback"] is False


def test_per_head_counts_fallen_back_heads():
    q, k, v = synthetic_qkv(1, 4, 2, 1000, 64, seed=0, strength=0.0)
    scattered = {"method": "vertical_slash", "vertical": 30, "slash": 400, "exact": False}
    _, st = PerHead(heads=[scattered, scattered, None, "streaming"])(q, k, v)
    assert st.info["dense_fallback"] == 2


# ------------------------------------------------------------------------------ unreached targets

@pytest.fixture
def fresh_warnings(monkeypatch):
    monkeypatch.setattr(base, "_warned_targets", set())


def test_unreached_target_warns_once(fresh_warnings):
    q, k, v = synthetic_qkv(1, 2, 1, 300, 64, seed=0)
    with pytest.warns(sparsa.CompressionNotReached) as record:
        _, st = sparsa.attention(q, k, v, "block_sparse", compression=20.0, return_stats=True)
    assert st.compression < 18.0
    msg = str(record[0].message)
    assert "block_sparse" in msg and "20" in msg and f"{st.compression:.3f}" in msg
    assert issubclass(sparsa.CompressionNotReached, UserWarning)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sparsa.attention(q, k, v, "block_sparse", compression=20.0)       # same (method, target): silent
    with pytest.warns(sparsa.CompressionNotReached):
        sparsa.attention(q, k, v, "block_sparse", compression=30.0)       # another target warns


def test_reached_target_and_explicit_budgets_do_not_warn(fresh_warnings):
    q, k, v = synthetic_qkv(1, 2, 1, 4096, 64, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sparsa.attention(q[:, :, -300:], k[:, :, -300:], v[:, :, -300:], "block_sparse", compression=2.0)
        # explicit hyper-parameters fix the budget: nothing to reach
        sparsa.attention(q[:, :, -300:], k[:, :, -300:], v[:, :, -300:], "block_sparse", compression=20.0,
                         top_k=2)
