"""The Triton vertical-slash kernels (conversion and attention) against their references,
on the CPU under the Triton interpreter."""
import os

import pytest

os.environ["TRITON_INTERPRET"] = "1"          # before any triton-dependent import
pytest.importorskip("triton", reason="triton is not installed")

import torch  # noqa: E402

from sparsa.ops.dense.reference import dense_attention, query_positions  # noqa: E402
from sparsa.ops.vertical_slash import vertical_slash_attention, vertical_slash_attention_ref  # noqa: E402
from sparsa.ops.vertical_slash.convert import (DIAG_PAD, VS_TILE, pack_bits, prepare_vertical_slash,  # noqa: E402
                                               slash_runs, superset_pairs, superset_routes_dense,
                                               tile_cover_mask, vertical_slash_pairs, vertical_slash_superset_ref)
from sparsa.ops.vertical_slash.estimate import line_mass_reference  # noqa: E402
from sparsa.ops.vertical_slash import estimate_triton  # noqa: E402
from sparsa.ops.vertical_slash.triton import vertical_slash_attention_triton  # noqa: E402


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def random_lines(b: int, hx: int, kv_len: int, nv: int, ns: int, gen: torch.Generator):
    """Random columns and offsets with repeats and -1 slots; one head gets no line at all."""
    vi = torch.randint(-1, kv_len, (b, hx, nv), generator=gen)
    si = torch.randint(-1, kv_len, (b, hx, ns), generator=gen)
    si[..., : ns // 3] = torch.randint(0, 40, (b, hx, ns // 3), generator=gen)   # clustered near the diagonal
    vi[0, 0] = -1
    si[0, 0] = -1
    return vi.to(torch.int32), si


def qkv(b, h, hkv, lq, lk, d, dtype, gen):
    return (torch.randn(b, h, lq, d, generator=gen).to(dtype), torch.randn(b, hkv, lk, d, generator=gen).to(dtype),
            torch.randn(b, hkv, lk, d, generator=gen).to(dtype))


def spec_and_kernel_layouts(vi, si, lq, lk, bq, exact):
    """The PyTorch (spec) and Triton conversions of the same lines; asserts they build the same tiles."""
    spec = prepare_vertical_slash(vi, si, lq, lk, use_triton=False, block_q=bq, exact=exact)
    fast = prepare_vertical_slash(vi, si, lq, lk, use_triton=True, block_q=bq, exact=exact)
    assert torch.equal(spec.tiles, fast.tiles)
    assert torch.equal(spec.clean_count, fast.clean_count)
    assert torch.equal(spec.masked_count, fast.masked_count)
    return spec, fast


def exact_kernel_matches_reference(q, k, v, vi, si, bq):
    """Runs the exact kernel on the Triton-built layout against the reference; returns the layout."""
    layout = prepare_vertical_slash(vi, si, q.shape[2], k.shape[2], use_triton=True, block_q=bq)
    out = vertical_slash_attention_triton(q, k, v, layout=layout)
    ref, _ = vertical_slash_attention_ref(q, k, v, vi, si)
    assert rel_err(out, ref) <= 1e-4
    return layout


CASES = [
    # batch, heads, kv_heads, q_len, kv_len, head_dim, lines per KV head, n_vertical, n_slash, block_q
    (2, 4, 4, 200, 200, 64, False, 12, 16, 64),
    (2, 8, 2, 130, 200, 64, True, 20, 30, 64),     # GQA 4, two heads stacked per program
    (1, 8, 1, 200, 200, 64, False, 6, 40, 128),    # GQA 8, per-head lines
    (1, 2, 1, 70, 150, 128, True, 5, 9, 128),      # head_dim 128, q_len < kv_len
]


@pytest.mark.parametrize("b,h,hkv,lq,lk,d,shared,nv,ns,bq", CASES)
def test_conversion_kernel_matches_spec(b, h, hkv, lq, lk, d, shared, nv, ns, bq):
    gen = torch.Generator().manual_seed(lq * 7 + lk)
    vi, si = random_lines(b, hkv if shared else h, lk, nv, ns, gen)
    for exact in (True, False):
        spec, fast = spec_and_kernel_layouts(vi, si, lq, lk, bq, exact)
        if not exact:
            assert torch.equal(spec.tile_pairs, fast.tile_pairs)
    # tiles are disjoint and cover every causal pair of every chosen diagonal
    ts = spec.tile_starts()
    both = (ts[..., 1:] >= 0) & (ts[..., :-1] >= 0)
    assert bool(((ts[..., 1:] - ts[..., :-1] >= VS_TILE) | ~both).all())
    cover = tile_cover_mask(spec)
    pos = query_positions(lq, lk)
    offset = pos[:, None] - torch.arange(lk)[None, :]
    on_diag = spec.offset_table.bool()[:, :, offset.clamp_min(0)] & (offset >= 0)
    assert bool((cover | ~on_diag).all())


@pytest.mark.parametrize("b,h,hkv,lq,lk,d,shared,nv,ns,bq", CASES)
def test_kernel_matches_reference_fp32(b, h, hkv, lq, lk, d, shared, nv, ns, bq):
    gen = torch.Generator().manual_seed(lq * 13 + lk)
    q, k, v = qkv(b, h, hkv, lq, lk, d, torch.float32, gen)
    vi, si = random_lines(b, hkv if shared else h, lk, nv, ns, gen)
    out = vertical_slash_attention_triton(q, k, v, vi, si, scale=0.13, block_q=bq)
    ref, ref_pairs = vertical_slash_attention_ref(q, k, v, vi, si, scale=0.13)
    assert torch.isfinite(out).all()
    assert rel_err(out, ref) <= 1e-4
    assert out[0, 0].abs().max() == 0             # a head with no line outputs zeros
    out2, pairs = vertical_slash_attention(q, k, v, vi, si, scale=0.13, backend="triton")
    assert rel_err(out2, ref) <= 1e-4
    assert torch.equal(pairs, ref_pairs)


@pytest.mark.parametrize("bq", [64, 128])
def test_band_with_clean_tiles(bq):
    """A band of recent diagonals: most tiles run unmasked; the result is still exact."""
    gen = torch.Generator().manual_seed(bq)
    b, h, hkv, lq, lk, d = 1, 2, 1, 330, 400, 64
    q, k, v = qkv(b, h, hkv, lq, lk, d, torch.float32, gen)
    si = torch.cat([torch.arange(0, 200), torch.tensor([230, 231, 300])]).expand(b, h, -1)
    vi = torch.tensor([0, 1, 2, 250]).expand(b, h, -1)
    layout = exact_kernel_matches_reference(q, k, v, vi, si, bq)
    assert int(layout.clean_count.sum()) > 0


def test_superset_semantics_and_bf16():
    gen = torch.Generator().manual_seed(5)
    b, h, hkv, lq, lk, d = 1, 4, 2, 150, 150, 64
    q, k, v = qkv(b, h, hkv, lq, lk, d, torch.bfloat16, gen)
    vi, si = random_lines(b, h, lk, 8, 10, gen)
    exact = vertical_slash_attention_triton(q, k, v, vi, si, block_q=64)
    layout = prepare_vertical_slash(vi, si, lq, lk, use_triton=True, block_q=64, exact=False)
    sup = vertical_slash_attention_triton(q, k, v, layout=layout)
    ref_exact, _ = vertical_slash_attention_ref(q.float(), k.float(), v.float(), vi, si)
    ref_sup, _ = vertical_slash_superset_ref(q.float(), k.float(), v.float(), layout)
    assert exact.dtype == torch.bfloat16
    assert rel_err(exact, ref_exact) <= 1e-2
    assert rel_err(sup, ref_sup) <= 1e-2
    assert rel_err(ref_sup, ref_exact) > 0.05       # the two semantics really differ here


def test_all_lines_equal_dense_and_pairs():
    gen = torch.Generator().manual_seed(3)
    b, h, hkv, lq, lk, d = 1, 2, 1, 90, 130, 64
    q, k, v = qkv(b, h, hkv, lq, lk, d, torch.float32, gen)
    si = torch.arange(lk).expand(b, h, lk)
    vi = torch.tensor([0, 5, 5, 129, -1]).expand(b, h, 5)
    out, pairs = vertical_slash_attention(q, k, v, vi, si, backend="triton")
    assert rel_err(out, dense_attention(q, k, v)) <= 1e-4
    layout = prepare_vertical_slash(vi, si, lq, lk, use_triton=True)
    assert torch.equal(pairs, vertical_slash_pairs(layout, h))
    assert float(pairs[0, 0]) == (lk - lq + 1 + lk) * lq / 2


def test_bad_inputs_name_the_argument(monkeypatch):
    q = torch.randn(1, 2, 64, 64)
    vi = torch.zeros(1, 2, 3, dtype=torch.int32)
    with pytest.raises(ValueError, match="^slash_indices"):
        vertical_slash_attention_triton(q, q, q, vi, torch.full((1, 2, 2), 64))
    with pytest.raises(ValueError, match="^vertical_indices"):
        vertical_slash_attention_triton(q, q, q, vi[:, :1].expand(1, 3, 3), vi)
    with pytest.raises(TypeError, match="^slash_indices"):
        vertical_slash_attention_triton(q, q, q, vi, vi.float())
    with pytest.raises(ValueError, match="^q: .*head_dim"):
        vertical_slash_attention_triton(q[..., :16], q[..., :16], q[..., :16], vi, vi)
    with pytest.raises(ValueError, match="^backend"):
        vertical_slash_attention(q[..., :16], q[..., :16], q[..., :16], vi, vi, backend="triton")
    with pytest.raises(TypeError, match="^exact"):
        vertical_slash_attention(q, q, q, vi, vi, exact="no")
    with pytest.raises(ValueError, match="^block_q"):
        vertical_slash_attention(q, q, q, vi, vi, block_q=96)
    with pytest.raises(ValueError, match="^last_q"):
        estimate_triton.line_mass_triton(q, q, 0.1, 0)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="^q: .*CUDA"):
        vertical_slash_attention_triton(q, q, q, vi, vi)


@pytest.mark.parametrize("bq", [64, 128])
def test_runs_of_diagonals_match_spec_and_count_superset_pairs(bq):
    """Long runs of consecutive diagonals (several tiles per run and block), isolated ones, runs
    reaching offset 0 and the last offset; q_len not a multiple of the block."""
    b, hx, lq, lk = 2, 2, 300, 457
    si = torch.cat([torch.arange(0, 150), torch.arange(200, 203), torch.tensor([260, 300, 301, 456]),
                    torch.arange(330, 420)]).expand(b, hx, -1).clone()
    si[1, 1, :40] = -1
    vi = torch.tensor([0, 1, 2, 99, 250, 251, 456]).expand(b, hx, -1).clone()
    vi[0, 1] = -1
    for exact in (True, False):
        spec, fast = spec_and_kernel_layouts(vi, si, lq, lk, bq, exact)
    # superset pairs against a brute-force count of (tiles or columns) and causal
    cover = tile_cover_mask(fast)
    causal = torch.arange(lk)[None, :] <= query_positions(lq, lk)[:, None]
    brute = ((cover | fast.column_table.bool()[:, :, None, :]) & causal).sum((-1, -2)).double()
    assert torch.equal(superset_pairs(fast, hx), brute)
    # a block never has more tiles than a dense causal pass over it
    end = torch.clamp(torch.arange(fast.n_query_blocks) * bq + (lk - lq) + bq, max=lk)
    assert bool((fast.tile_count <= (end + VS_TILE - 1) // VS_TILE).all())


@pytest.mark.parametrize("bq", [64, 128])
def test_tile_list_width_follows_the_runs(bq):
    """The list width is the runs' bound: never below a block's tile count (random lines,
    every greedy tile must fit), and about n_slash / 64 for a band instead of n_slash."""
    gen = torch.Generator().manual_seed(3)
    lq = lk = 1000
    vi, si = random_lines(2, 3, lk, 7, 60, gen)
    for use_triton in (False, True):
        lay = prepare_vertical_slash(vi, si, lq, lk, use_triton=use_triton, block_q=bq)
        width = lay.tiles.shape[-1]
        assert int(lay.tile_count.max()) <= width <= (lk + VS_TILE - 1) // VS_TILE
        runs = slash_runs(lay.slash, lay.slash_count)
        span = (runs[0].long() - runs[1].long() + bq + VS_TILE - 1) // VS_TILE
        valid = torch.arange(runs[0].shape[-1]) < runs[2].long()[..., None]
        assert width == min(int(torch.where(valid, span, 0).sum(-1).max()), (lk + VS_TILE - 1) // VS_TILE)
    band = torch.arange(300).expand(1, 2, -1).contiguous()
    lay = prepare_vertical_slash(torch.zeros(1, 2, 1, dtype=torch.int32), band, 4096, 4096, use_triton=True,
                                 block_q=bq)
    assert lay.tiles.shape[-1] == (299 + bq + VS_TILE - 1) // VS_TILE          # one run, offsets 299..0
    assert int(lay.tile_count.max()) <= lay.tiles.shape[-1] < 300 // 16

def test_slash_runs_and_bit_packing():
    si = torch.tensor([[[9, 8, 7, 5, 3, 2, 0, -1, -1]]], dtype=torch.int32)
    high, low, count = slash_runs(si, torch.tensor([[7]], dtype=torch.int32))
    assert int(count) == 4
    assert high[0, 0, :4].tolist() == [9, 5, 3, 0] and low[0, 0, :4].tolist() == [7, 5, 2, 0]
    assert bool((high[0, 0, 4:] == -1).all())
    table = (torch.rand(2, 3, 100) < 0.4).to(torch.uint8)
    words = pack_bits(table, 5)
    bits = (words.to(torch.int64)[..., None] >> torch.arange(32)) & 1
    assert torch.equal(bits.flatten(-2)[..., :100], table.to(torch.int64))
    assert int(bits.flatten(-2)[..., 100:].sum()) == 0
    lay = prepare_vertical_slash(torch.zeros(1, 1, 1, dtype=torch.int32), torch.tensor([[[0, 3, 70]]]), 80, 80,
                                 use_triton=False)
    unpacked = ((lay.diag_bits.to(torch.int64)[..., None] >> torch.arange(32)) & 1).flatten(-2)
    assert unpacked[0, 0].nonzero().flatten().tolist() == [DIAG_PAD + 0, DIAG_PAD + 3, DIAG_PAD + 70]


@pytest.mark.parametrize("bq", [64, 128])
def test_exact_kernel_on_scattered_lines(bq):
    """Lines over the whole context: nearly every tile is partial and takes the bit test."""
    gen = torch.Generator().manual_seed(11 + bq)
    b, h, hkv, lq, lk, d = 1, 4, 2, 260, 390, 64
    q, k, v = qkv(b, h, hkv, lq, lk, d, torch.float32, gen)
    si = torch.randperm(lk, generator=gen)[:60].expand(b, hkv, -1).contiguous()
    vi = torch.randperm(lk, generator=gen)[:9].expand(b, hkv, -1).contiguous()
    exact_kernel_matches_reference(q, k, v, vi, si, bq)


def test_superset_dispatch_matches_reference_backend():
    """exact=False through the dispatch: Triton and reference backends agree, outputs and pairs."""
    gen = torch.Generator().manual_seed(21)
    b, h, hkv, lq, lk, d = 1, 4, 2, 200, 901, 64
    q, k, v = qkv(b, h, hkv, lq, lk, d, torch.float32, gen)
    si = torch.cat([torch.arange(0, 40), torch.tensor([77, 150])]).expand(b, h, -1).contiguous()
    vi = torch.tensor([0, 1, 5, 780]).expand(b, h, -1).contiguous()
    for bq in (64, 128):
        lay = prepare_vertical_slash(vi, si, lq, lk, use_triton=False, block_q=bq, exact=False)
        assert not superset_routes_dense(lay)
        out, pairs = vertical_slash_attention(q, k, v, vi, si, backend="triton", exact=False, block_q=bq)
        ref, ref_pairs = vertical_slash_attention(q, k, v, vi, si, backend="reference", exact=False, block_q=bq)
        spec, spec_pairs = vertical_slash_superset_ref(q, k, v, lay)
        assert rel_err(out, ref) <= 1e-4 and rel_err(ref, spec) <= 1e-6
        assert torch.equal(pairs, ref_pairs) and torch.equal(ref_pairs, spec_pairs)
        _, exact_pairs = vertical_slash_attention(q, k, v, vi, si, backend="reference")
        assert bool((pairs >= exact_pairs).all()) and bool((pairs > exact_pairs).any())


def test_superset_routes_scattered_lines_to_dense():
    gen = torch.Generator().manual_seed(4)
    b, h, hkv, lq, lk, d = 1, 2, 1, 256, 256, 64
    q, k, v = qkv(b, h, hkv, lq, lk, d, torch.float32, gen)
    si = torch.randperm(lk, generator=gen)[:40].expand(b, h, -1).contiguous()
    vi = torch.tensor([0, 3]).expand(b, h, -1).contiguous()
    lay = prepare_vertical_slash(vi, si, lq, lk, use_triton=False, block_q=128, exact=False)
    assert superset_routes_dense(lay)
    dense = dense_attention(q, k, v)
    for backend in ("triton", "reference"):
        out, pairs = vertical_slash_attention(q, k, v, vi, si, backend=backend, exact=False, block_q=128)
        assert rel_err(out, dense) <= 1e-5
        assert float(pairs[0, 0]) == lk * (lk + 1) / 2
    # exact semantics never take the dense route
    out, _ = vertical_slash_attention(q, k, v, vi, si, backend="triton", block_q=128)
    ref, _ = vertical_slash_attention_ref(q, k, v, vi, si)
    assert rel_err(out, ref) <= 1e-4


@pytest.mark.parametrize("b,h,hkv,lq,lk,d,last_q,dtype", [
    (1, 4, 2, 100, 301, 64, 64, torch.float32),     # q_len < kv_len, kv_len not a multiple of 64
    (2, 2, 1, 150, 150, 64, 100, torch.float32),    # two chunks of estimate rows
    (1, 2, 2, 30, 77, 128, 64, torch.bfloat16),     # fewer query rows than last_q
])
def test_line_mass_kernel_matches_reference(b, h, hkv, lq, lk, d, last_q, dtype, monkeypatch):
    gen = torch.Generator().manual_seed(lk)
    q = torch.randn(b, h, lq, d, generator=gen).to(dtype)
    k = torch.randn(b, hkv, lk, d, generator=gen).to(dtype)
    ref_v, ref_s = line_mass_reference(q.double(), k.double(), 0.15, last_q)
    for gather in (True, False):
        monkeypatch.setattr(estimate_triton, "_gather_ok", gather)
        vert, slash = estimate_triton.line_mass_triton(q, k, 0.15, last_q)
        assert estimate_triton.diagonal_path() == ("gather" if gather else "buffer")
        assert vert.dtype == torch.float32 and vert.shape == (b, h, lk)
        assert float((vert.double() - ref_v).abs().max()) <= 1e-6
        assert float((slash.double() - ref_s).abs().max()) <= 1e-6


@pytest.mark.parametrize("exact", [True, False])
def test_method_triton_path_matches_reference_path(exact):
    """VerticalSlash end to end (estimate kernels, top-k selection, conversion, attention) against
    the same method on the reference backend."""
    from sparsa.methods.vertical_slash import VerticalSlash
    gen = torch.Generator().manual_seed(8)
    b, h, hkv, lq, lk, d = 1, 4, 2, 190, 700, 64
    q, k, v = qkv(b, h, hkv, lq, lk, d, torch.float32, gen)
    method = VerticalSlash(vertical=8, slash=20, last_q=64, init_tokens=4, local_diagonals=10, exact=exact)
    vi_t, si_t, _ = method._plan(q, k, d ** -0.5, "triton")
    vi_r, si_r, _ = method._plan(q, k, d ** -0.5, "reference")
    assert torch.equal(vi_t, vi_r) and torch.equal(si_t, si_r)
    out, stats = method(q, k, v, backend="triton")
    ref, ref_stats = method(q, k, v, backend="reference")
    assert rel_err(out, ref) <= 1e-4
    assert stats.computed == ref_stats.computed


@pytest.mark.parametrize("exact,bq", [(True, 64), (False, 128)])
def test_bound_width_gives_the_same_tiles_and_output(exact, bq):
    """The host bound of the list width (no read-back; the CUDA default) only adds -1 slots in
    the middle of each row: clean tiles, masked tiles, counts and the attention are unchanged."""
    from sparsa.ops.vertical_slash.runs import tiles_width_bound
    gen = torch.Generator().manual_seed(11)
    b, h, hkv, lq, lk, d = 2, 4, 2, 300, 333, 64
    vi, si = random_lines(b, hkv, lk, 9, 40, gen)
    q, k, v = qkv(b, h, hkv, lq, lk, d, torch.float32, gen)
    for use_triton in (False, True):
        tight = prepare_vertical_slash(vi, si, lq, lk, use_triton=use_triton, block_q=bq, exact=exact,
                                       exact_width=True)
        wide = prepare_vertical_slash(vi, si, lq, lk, use_triton=use_triton, block_q=bq, exact=exact,
                                      exact_width=False)
        w, wt = wide.tiles.shape[-1], tight.tiles.shape[-1]
        assert w == tiles_width_bound(tight.slash.shape[-1], lk, bq) >= wt
        assert torch.equal(wide.clean_count, tight.clean_count) and torch.equal(wide.masked_count, tight.masked_count)
        for qb in range(tight.n_query_blocks):
            nc, nm = tight.clean_count[..., qb], tight.masked_count[..., qb]
            for bb in range(b):
                for hh in range(hkv):
                    c, m = int(nc[bb, hh]), int(nm[bb, hh])
                    assert torch.equal(wide.tiles[bb, hh, qb, :c], tight.tiles[bb, hh, qb, :c])
                    assert torch.equal(wide.tiles[bb, hh, qb, w - m:], tight.tiles[bb, hh, qb, wt - m:])
        if wide.tile_pairs is not None:
            assert torch.equal(wide.tile_pairs, tight.tile_pairs)
    out_w = vertical_slash_attention_triton(q, k, v, layout=wide)
    out_t = vertical_slash_attention_triton(q, k, v, layout=tight)
    assert torch.equal(out_w, out_t)
