"""The Triton NSA kernels against the reference, on the CPU under the Triton interpreter.

Outputs, block choices and the gradients of q, k, v, the gates, the compression parameters and
separate window keys/values; GQA groups 1, 4 and 16; head dims 64 and 128; odd lengths; the
decode kernels; bad inputs.
"""
import math
import os

import pytest

os.environ["TRITON_INTERPRET"] = "1"          # before any triton-dependent import
pytest.importorskip("triton", reason="triton is not installed")

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from sparsa.ops.nsa import (CompressionParams, NSAConfig, compress_blocks, nsa_attention,  # noqa: E402
                            nsa_attention_ref, nsa_decode, nsa_decode_ref)
from sparsa.ops.nsa import triton_bwd  # noqa: E402
from sparsa.ops.nsa.triton import nsa_attention_triton, nsa_decode_triton, unsupported_reason  # noqa: E402
from sparsa.ops.nsa.triton_bwd import inverted_index  # noqa: E402
from sparsa.ops.nsa import triton_decode  # noqa: E402
from sparsa.ops.nsa.triton_decode import group_weights  # noqa: E402
from sparsa.ops.nsa import triton_fwd  # noqa: E402
from sparsa.ops.nsa.triton_fwd import _topk_init, _topk_merge  # noqa: E402

from ..._util import TritonLaunches  # noqa: E402


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


# block 16 / stride 8 / sel_block 16 (a token overlaps two selection blocks, weights 1,2,1), the
# paper's forced blocks and one free choice
SMALL = NSAConfig(block=16, stride=8, sel_block=16, n_select=4, window=24)
# 32/16/32 with one local block forced and two free choices
WIDE = NSAConfig(block=32, stride=16, sel_block=32, n_select=4, window=40, n_forced_local=1)
# fla's variant scaled down: block = stride = sel_block, window off
FLA = NSAConfig(block=16, stride=16, sel_block=16, n_select=3, window=0, n_forced_init=1, n_forced_local=1)
# the paper's geometry (32/16/64), 5 blocks chosen
PAPER = NSAConfig(block=32, stride=16, sel_block=64, n_select=5, window=64)


def inputs(b, h, hkv, lq, lk, d, seed, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, lq, d, generator=gen).to(dtype)
    k = torch.randn(b, hkv, lk, d, generator=gen).to(dtype)
    v = torch.randn(b, hkv, lk, d, generator=gen).to(dtype)
    gates = torch.rand(b, h, lq, 3, generator=gen)
    do = torch.randn(b, h, lq, d, generator=gen).to(dtype)
    return q, k, v, gates, do


def decode_inputs(b, h, hkv, lk, d, seed):
    """One decode step's q (b, h, d), k, v (b, hkv, lk, d) and gates (b, h, 3), float32."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, d, generator=gen)
    k = torch.randn(b, hkv, lk, d, generator=gen)
    v = torch.randn(b, hkv, lk, d, generator=gen)
    return q, k, v, torch.rand(b, h, 3, generator=gen)


def ref_blocks(pos, cfg):
    """The blocks the decode reference chose, from the key positions it read (B, Hkv, n): the
    first position of each selected block's slot (every slot filled)."""
    slots = pos[..., :cfg.n_select * cfg.sel_block].reshape(*pos.shape[:-1], cfg.n_select, -1)
    return slots[..., 0] // cfg.sel_block


def run_both(q, k, v, gates, do, cfg, **kw):
    """Outputs, aux and gradients of both implementations: {name: (out, aux, grads)}."""
    res = {}
    for name, fn in (("triton", nsa_attention_triton), ("ref", nsa_attention_ref)):
        leaves = [x.detach().clone().requires_grad_() for x in (q, k, v, gates)]
        extra = {}
        for key, val in kw.items():
            if isinstance(val, torch.Tensor):
                val = val.detach().clone().requires_grad_()
            elif isinstance(val, CompressionParams):
                val = CompressionParams(*(t.detach().clone().requires_grad_()
                                          for t in (val.pos, val.w1, val.b1, val.w2, val.b2)))
            extra[key] = val
        out, aux = fn(*leaves, cfg, return_aux=True, **extra)
        params = [t for t in extra.values() if isinstance(t, torch.Tensor)]
        for val in extra.values():
            if isinstance(val, CompressionParams):
                params += [val.pos, val.w1, val.b1, val.w2, val.b2]
        grads = torch.autograd.grad(out, leaves + params, do, allow_unused=True)
        res[name] = (out, aux, grads)
    return res


CASES = [
    # batch, heads, kv_heads, q_len, kv_len, head_dim, cfg
    (2, 4, 1, 77, 77, 64, SMALL),        # GQA 4, batch 2, odd length, free choices among 5 blocks
    (1, 16, 1, 45, 101, 128, WIDE),      # GQA 16, head dim 128, q_len < kv_len
    (1, 2, 2, 70, 70, 64, FLA),          # GQA 1, fla geometry, window off
    (1, 4, 1, 150, 150, 64, PAPER),      # paper geometry, GQA 4
]


@pytest.mark.parametrize("b,h,hkv,lq,lk,d,cfg", CASES)
def test_forward_backward_match_reference_fp32(b, h, hkv, lq, lk, d, cfg):
    q, k, v, gates, do = inputs(b, h, hkv, lq, lk, d, seed=lq * 7 + h)
    res = run_both(q, k, v, gates, do, cfg)
    (out, aux, grads), (ref, raux, rgrads) = res["triton"], res["ref"]
    assert torch.equal(aux.block_indices, raux.block_indices)
    assert rel_err(out, ref) <= 1e-4
    for name in ("o_cmp", "o_slc", "o_win"):
        if getattr(raux, name).abs().max() > 0:
            assert rel_err(getattr(aux, name), getattr(raux, name)) <= 1e-4, name
    for name in ("pairs_cmp", "pairs_slc", "pairs_win"):
        assert torch.equal(getattr(aux, name), getattr(raux, name)), name
    for name, g, rg in zip(("dq", "dk", "dv", "dgates"), grads, rgrads):
        assert torch.isfinite(g).all(), name
        assert rel_err(g, rg) <= 1e-4, name


@pytest.mark.parametrize("tile_blocks", [32, 64])
def test_wider_topk_tiles_choose_the_same_blocks(monkeypatch, tile_blocks):
    """The top-k tile width is a speed knob only: more blocks per tile than list slots, same
    blocks and outputs."""
    from sparsa.ops.nsa import triton_fwd
    monkeypatch.setattr(triton_fwd, "TOPK_TILE_BLOCKS", tile_blocks)
    q, k, v, gates, _ = inputs(1, 4, 1, 300, 300, 64, seed=11)
    out, aux = nsa_attention_triton(q, k, v, gates, SMALL, return_aux=True)
    ref, raux = nsa_attention_ref(q, k, v, gates, SMALL, return_aux=True)
    assert torch.equal(aux.block_indices, raux.block_indices)
    assert rel_err(out, ref) <= 1e-4


def test_learned_compression_separate_window_kv_and_split_selection_lists(monkeypatch):
    """Gradients reach the compression MLP and k_win/v_win; dK/dV of blocks chosen by many
    queries, and of compressed keys, are summed over several programs (short segments and
    query chunks force the split)."""
    monkeypatch.setattr(triton_bwd, "SEGMENT", 8)
    monkeypatch.setattr(triton_bwd, "Q_CHUNK", 16)   # compression dK/dV split over programs too
    b, h, hkv, lq, d = 1, 8, 2, 66, 64
    q, k, v, gates, do = inputs(b, h, hkv, lq, lq, d, seed=5)
    gen = torch.Generator().manual_seed(6)
    k_win, v_win = torch.randn(2, b, hkv, lq, d, generator=gen)
    ck = CompressionParams.random(SMALL.block, d, 24, generator=gen)
    cv = CompressionParams.random(SMALL.block, d, 24, generator=gen)
    res = run_both(q, k, v, gates, do, SMALL, k_win=k_win, v_win=v_win, compress_k=ck, compress_v=cv)
    (out, aux, grads), (ref, raux, rgrads) = res["triton"], res["ref"]
    assert torch.equal(aux.block_indices, raux.block_indices)
    assert rel_err(out, ref) <= 1e-4
    assert len(grads) == 6 + 10
    for i, (g, rg) in enumerate(zip(grads, rgrads)):
        # the key map's output bias shifts every score of a row equally: its true gradient is 0
        tiny = float(rg.norm()) < 1e-5
        assert rel_err(g, rg) <= 1e-4 or (tiny and float(g.norm()) < 1e-5), i


def test_bfloat16_within_tolerance():
    q, k, v, gates, do = inputs(1, 8, 2, 90, 90, 64, seed=11, dtype=torch.bfloat16)
    res = run_both(q, k, v, gates.to(torch.bfloat16), do, SMALL)
    (out, _, grads), (ref, _, rgrads) = res["triton"], res["ref"]
    assert out.dtype == torch.bfloat16
    assert rel_err(out, ref) <= 1e-2
    for g, rg in zip(grads, rgrads):
        assert rel_err(g, rg) <= 1e-2


def test_exact_ties_go_to_the_lower_block():
    """Identical keys give uniform compression probabilities; where a row sees a power-of-two
    number of compressed tokens they are exact, so interior blocks tie exactly and the lower
    one must win, as in the reference's stable sort. (Elsewhere equal-in-theory scores differ
    by rounding in either implementation.)"""
    b, h, hkv, d, length = 1, 4, 1, 64, 80
    q, _, v, gates, do = inputs(b, h, hkv, length, length, d, seed=1)
    k = torch.full((b, hkv, length, d), 0.3)
    res = run_both(q, k, v, gates, do, SMALL)
    (out, aux, _), (ref, raux, _) = res["triton"], res["ref"]
    pos = torch.arange(length)
    n_vis = torch.clamp((pos + 1 - SMALL.block) // SMALL.stride + 1, min=0)
    exact = (n_vis > 0) & ((n_vis & (n_vis - 1)) == 0)
    assert int(exact.sum()) == 32
    assert torch.equal(aux.block_indices[:, :, exact], raux.block_indices[:, :, exact])
    assert (aux.block_indices[0, 0, 71:79] == torch.tensor([0, 1, 3, 4])).all()   # 1 and 2 tie: 1 wins
    assert rel_err(out[:, :, exact], ref[:, :, exact]) <= 1e-4


def test_shorter_than_one_compression_block():
    """No compressed token: the compression branch is zero, every block scores 0 and the
    lowest blocks are chosen; no NaN anywhere, gradients included."""
    cfg = NSAConfig(block=24, stride=8, sel_block=16, n_select=1, window=8, n_forced_init=0, n_forced_local=0)
    q, k, v, gates, do = inputs(1, 4, 2, 23, 23, 64, seed=12)
    res = run_both(q, k, v, gates, do, cfg)
    (out, aux, grads), (ref, raux, rgrads) = res["triton"], res["ref"]
    assert torch.equal(aux.block_indices, raux.block_indices)
    assert (aux.block_indices == 0).all()
    assert aux.o_cmp.abs().max() == 0
    assert rel_err(out, ref) <= 1e-4
    for g, rg in zip(grads, rgrads):
        assert torch.isfinite(g).all()
        assert rel_err(g, rg) <= 1e-4


def test_inverted_index_lists_every_choice_once():
    gen = torch.Generator().manual_seed(3)
    idx = torch.randint(-1, 6, (2, 3, 20, 4), generator=gen).to(torch.int32)
    bh, blk, st, en, single, t_list = inverted_index(idx, 6, segment=3)
    seen = {}
    for s in range(bh.numel()):
        for e in range(int(st[s]), int(en[s])):
            seen.setdefault((int(bh[s]), int(blk[s])), []).append(int(t_list[e]))
    want = {}
    for b in range(2):
        for kh in range(3):
            for t in range(20):
                for j in idx[b, kh, t].tolist():
                    if j >= 0:
                        want.setdefault((b * 3 + kh, j), []).append(t)
    assert seen == want
    counts = {key: len(val) for key, val in want.items()}
    for s in range(bh.numel()):
        if en[s] > st[s]:
            assert bool(single[s]) == (counts[(int(bh[s]), int(blk[s]))] <= 3)


def test_dispatcher_routes_and_falls_back():
    q, k, v, gates, _ = inputs(1, 4, 1, 40, 40, 64, seed=2)
    out = nsa_attention(q, k, v, gates, SMALL, backend="triton")
    assert torch.equal(out, nsa_attention_triton(q, k, v, gates, SMALL))
    # CPU tensors under "auto": the reference
    assert torch.equal(nsa_attention(q, k, v, gates, SMALL, backend="auto"), nsa_attention_ref(q, k, v, gates, SMALL))
    odd = NSAConfig(block=24, stride=8, sel_block=24, n_select=3)   # sel_block not a power of two
    assert unsupported_reason(q, k, odd) is not None
    with pytest.raises(ValueError, match="^backend: .*sel_block"):
        nsa_attention(q, k, v, gates, odd, backend="triton")
    with pytest.raises(ValueError, match="^backend: .*head_dim"):
        nsa_attention(q[..., :32], k[..., :32], v[..., :32], gates, SMALL, backend="triton")
    with pytest.raises(ValueError, match="^backend: .*dtype"):
        nsa_attention(q.double(), k.double(), v.double(), gates, SMALL, backend="triton")


def test_bad_inputs_name_the_argument(monkeypatch):
    q, k, v, gates, _ = inputs(1, 4, 1, 40, 40, 64, seed=4)
    with pytest.raises(ValueError, match="^q: .*head_dim"):
        nsa_attention_triton(q[..., :48], k[..., :48], v[..., :48], gates, SMALL)
    qq = torch.randn(1, 64, 40, 64)
    with pytest.raises(ValueError, match="^q: .*heads per KV head"):
        nsa_attention_triton(qq, k, v, torch.rand(1, 64, 40, 3), SMALL)
    with pytest.raises(ValueError, match="^cfg: .*block - stride"):
        nsa_attention_triton(q, k, v, gates, NSAConfig(block=64, stride=16, sel_block=32, n_select=4))
    with pytest.raises(ValueError, match="^gates"):
        nsa_attention_triton(q, k, v, gates[..., :2], SMALL)
    with pytest.raises(ValueError, match="^k_cmp"):
        kc = compress_blocks(k, SMALL)
        nsa_attention_triton(q, k, v, gates, SMALL, k_cmp=kc[:, :, 1:], v_cmp=kc[:, :, 1:])
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="^q: .*CUDA"):
        nsa_attention_triton(q, k, v, gates, SMALL)


def test_non_contiguous_inputs():
    b, h, hkv, lq, d = 1, 4, 2, 50, 64
    gen = torch.Generator().manual_seed(8)
    q = torch.randn(b, lq, h, d, generator=gen).transpose(1, 2)             # strided heads
    k = torch.randn(b, hkv, d, lq, generator=gen).transpose(2, 3)           # last dim not contiguous
    v = torch.randn(b, lq, hkv, d, generator=gen).transpose(1, 2)
    gates = torch.rand(b, h, 3, lq, generator=gen).transpose(2, 3)          # gate dim strided
    out = nsa_attention_triton(q, k, v, gates, SMALL)
    assert rel_err(out, nsa_attention_ref(q, k, v, gates, SMALL)) <= 1e-4


DECODE_CASES = [
    # batch, heads, kv_heads, kv_len, head_dim, cfg
    (2, 8, 2, 700, 64, PAPER),     # GQA 4: compressed tokens split over several programs
    (1, 16, 1, 333, 128, WIDE),    # GQA 16, head dim 128
    (2, 2, 2, 201, 64, FLA),       # GQA 1, fla geometry, no window
    (1, 4, 1, 20, 64, PAPER),      # shorter than one compression block
    # block - stride = sel_block: a token group feeds the next block too
    (2, 4, 1, 300, 64, NSAConfig(block=48, stride=16, sel_block=32, n_select=4, window=40)),
]


@pytest.mark.parametrize("b,h,hkv,lk,d,cfg", DECODE_CASES)
def test_decode_matches_reference(b, h, hkv, lk, d, cfg):
    q, k, v, gates = decode_inputs(b, h, hkv, lk, d, lk)
    ref, pos, tokens = nsa_decode_ref(q, k, v, gates, cfg)
    out, pos2, tokens2 = nsa_decode(q, k, v, gates, cfg, backend="triton")
    assert rel_err(out, ref) <= 1e-4
    assert torch.equal(pos, pos2)
    assert torch.equal(tokens, tokens2)
    # batch 1 and few programs: the splits change, the result does not
    out_small = nsa_decode_triton(q, k, v, gates, cfg)
    assert torch.equal(out_small, out)


@pytest.mark.parametrize("cfg,lq,lk", [(PAPER, 300, 700), (SMALL, 77, 77), (FLA, 129, 200)])
def test_topk_from_stored_keys_matches_the_running_list(monkeypatch, cfg, lq, lk):
    # keys stored per chunk of query rows (tiny chunks here) and ranked by torch.topk choose
    # exactly the blocks of the in-kernel list, with the same outputs
    b, h, hkv, d = 2, 8, 2, 64
    q, k, v, _, _ = inputs(b, h, hkv, lq, lk, d, lq)
    kc, vc = compress_blocks(k, cfg), compress_blocks(v, cfg)
    args = dict(kv_len=lk, cfg=cfg, scale=d ** -0.5, interpreted=True)
    o1, lse1, idx1 = triton_fwd.cmp_topk_fwd(q, kc, vc, **args)
    monkeypatch.setattr(triton_fwd, "TOPK_IN_KERNEL", False)
    monkeypatch.setattr(triton_fwd, "TOPK_KEYS_BYTES", 8 * b * hkv * 2 * cfg.n_sel_blocks(lk) * 16)
    o2, lse2, idx2 = triton_fwd.cmp_topk_fwd(q, kc, vc, **args)
    assert torch.equal(idx1, idx2) and torch.equal(o1, o2) and torch.equal(lse1, lse2)


@pytest.mark.parametrize("group,nsw", [(16, 16), (1, 16), (4, 3)])
def test_selection_tiles_of_several_queries_match_one_query_per_tile(monkeypatch, group, nsw):
    # neighbouring queries share some blocks and not others; some lists are short (-1 padded)
    gen = torch.Generator().manual_seed(group)
    b, hkv, lq, d, sb = 1, 2, 37, 64, 16
    lk = lq + 50
    q = torch.randn(b, hkv * group, lq, d, generator=gen)
    k, v = torch.randn(b, hkv, lk, d, generator=gen), torch.randn(b, hkv, lk, d, generator=gen)
    gates = torch.rand(b, hkv * group, lq, 3, generator=gen)
    o_cmp, o_win = torch.randn_like(q), torch.randn_like(q)
    n_blocks = -(-lk // sb)
    idx = torch.full((b, hkv, lq, nsw), -1, dtype=torch.int32)
    for t in range(lq):
        own = (lk - lq + t) // sb + 1                     # blocks a query may read
        for h in range(hkv):
            n = int(torch.randint(1, min(nsw, own) + 1, (1,), generator=gen))
            pool = torch.arange(min(own, n_blocks)) if t % 3 else torch.arange(min(own, 4))
            pick = pool[torch.randperm(len(pool), generator=gen)[:n]].sort().values
            idx[0, h, t, :len(pick)] = pick.int()
    # direct oracle: each (query, head) attends the keys of its blocks up to its position
    o_slc = torch.zeros_like(q)
    lse = torch.full((b, hkv * group, lq), float("inf"))
    for t in range(lq):
        pos = lk - lq + t
        for hd in range(hkv * group):
            blocks = idx[0, hd // group, t]
            keys = torch.cat([torch.arange(bl * sb, min(bl * sb + sb, pos + 1)) for bl in blocks[blocks >= 0].tolist()])
            s = (q[0, hd, t] @ k[0, hd // group, keys].T) * d ** -0.5
            o_slc[0, hd, t] = torch.softmax(s, 0) @ v[0, hd // group, keys]
            lse[0, hd, t] = torch.logsumexp(s, 0) / math.log(2)
    g = gates
    out = g[..., :1] * o_cmp + g[..., 1:2] * o_slc + g[..., 2:] * o_win
    args = dict(sel_block=sb, scale=d ** -0.5, interpreted=True)
    for rows in (16, 32, 64, 128):   # one query per tile (group 16, rows 16) up to 64 rows
        monkeypatch.setitem(triton_fwd.LAUNCH, "slc", (rows, 4, 2))
        got = triton_fwd.selection_fwd(q, k, v, idx, gates, o_cmp, o_win, **args)
        for a, e in zip(got, (out, o_slc, lse)):
            assert torch.allclose(a, e, rtol=1e-4, atol=1e-5)


def test_decode_split_sizes_do_not_change_the_result():
    # 4100 keys, SMALL geometry: 511 compressed tokens in 8 sub-tiles of 64; one program per
    # sub-tile, or one program looping over all eight (online softmax across sub-tiles)
    b, h, hkv, lk, d = 1, 4, 2, 4100, 64
    q, k, v, gates = decode_inputs(b, h, hkv, lk, d, 4)
    kc, vc = compress_blocks(k, SMALL), compress_blocks(v, SMALL)
    ref, pos, _ = nsa_decode_ref(q, k, v, gates, SMALL, k_cmp=kc, v_cmp=vc)
    want = ref_blocks(pos, SMALL)   # all four blocks exist
    for target in (1, 10_000):
        out, idx = triton_decode.nsa_decode_fwd(q, k, v, gates, kc, vc, k, v, cfg=SMALL, scale=d ** -0.5,
                                                interpreted=True, target_programs=target)
        assert rel_err(out, ref) <= 1e-4
        assert torch.equal(idx.long(), want)


def test_decode_long_window_chunks_in_several_tiles():
    # a 200-key window: one program per 64-key tile (many programs wanted), or one program
    # walking a 256-key chunk in four tiles (few programs wanted)
    b, h, hkv, lk, d = 1, 4, 1, 450, 64
    cfg = NSAConfig(block=32, stride=16, sel_block=64, n_select=3, window=200)
    q, k, v, gates = decode_inputs(b, h, hkv, lk, d, 7)
    kc, vc = compress_blocks(k, cfg), compress_blocks(v, cfg)
    ref, _, _ = nsa_decode_ref(q, k, v, gates, cfg, k_cmp=kc, v_cmp=vc)
    for target in (1, 10_000):
        out, _ = triton_decode.nsa_decode_fwd(q, k, v, gates, kc, vc, k, v, cfg=cfg, scale=d ** -0.5,
                                              interpreted=True, target_programs=target)
        assert rel_err(out, ref) <= 1e-4


def test_decode_empty_sub_tiles_with_very_negative_scores():
    # every compressed score is about -200 (log2 units) and the one program also walks three
    # sub-tiles past the last token: their softmax factor must be 0, not 2**200 * 0 = nan
    b, h, hkv, lk, d = 1, 4, 1, 2400, 64
    gen = torch.Generator().manual_seed(5)
    q = torch.full((b, h, d), -4.2) + 0.01 * torch.randn(b, h, d, generator=gen)
    k = torch.full((b, hkv, lk, d), 4.2) + 0.01 * torch.randn(b, hkv, lk, d, generator=gen)
    v = torch.randn(b, hkv, lk, d, generator=gen)
    gates = torch.rand(b, h, 3, generator=gen)
    kc, vc = compress_blocks(k, SMALL), compress_blocks(v, SMALL)
    assert 256 < kc.shape[2] <= 320                      # 5 sub-tiles of 64 tokens, rounded up to 8
    ref, _, _ = nsa_decode_ref(q, k, v, gates, SMALL, k_cmp=kc, v_cmp=vc)
    out, _ = triton_decode.nsa_decode_fwd(q, k, v, gates, kc, vc, k, v, cfg=SMALL, scale=d ** -0.5,
                                          interpreted=True, target_programs=1)
    assert torch.isfinite(out).all() and rel_err(out, ref) <= 1e-4


def test_decode_last_token_of_a_sub_tile_scores_the_next_sub_tiles_first_block():
    # paper geometry: compressed token 63 (keys 1008..1039), the last of the first 64-token
    # sub-tile, overlaps blocks 15 and 16; made to dominate, it alone decides the two free
    # choices, so block 16 is chosen only if its share crosses the sub-tile boundary
    b, h, hkv, lk, d = 1, 8, 2, 1500, 64
    q, k, v, gates = decode_inputs(b, h, hkv, lk, d, 6)
    kc, vc = 0.1 * compress_blocks(k, PAPER), compress_blocks(v, PAPER)
    kc[:, :, 63] = 3.0 * q.view(b, hkv, h // hkv, d).mean(2)
    assert kc.shape[2] > 64
    ref, pos, _ = nsa_decode_ref(q, k, v, gates, PAPER, k_cmp=kc, v_cmp=vc)
    want = ref_blocks(pos, PAPER)
    assert (want == 15).any(-1).all() and (want == 16).any(-1).all()
    for target in (1, 10_000):
        out, idx = triton_decode.nsa_decode_fwd(q, k, v, gates, kc, vc, k, v, cfg=PAPER, scale=d ** -0.5,
                                                interpreted=True, target_programs=target)
        assert rel_err(out, ref) <= 1e-4
        assert torch.equal(idx.long(), want)


@pytest.mark.parametrize("block,stride,sel_block", [(32, 16, 64), (16, 16, 16), (48, 16, 32), (32, 8, 16),
                                                    (64, 32, 64), (16, 4, 64)])
def test_decode_group_weights_are_the_block_overlaps(block, stride, sel_block):
    # overlap, in strides, of compressed token i (keys [i*stride, i*stride + block)) with
    # selection block j (keys [j*sel_block, (j+1)*sel_block)), straight from the key ranges
    r_, c_ = sel_block // stride, block // stride
    w = group_weights(r_, c_)
    assert w.shape == (1 + -(-(c_ - 1) // r_), r_)
    for j in range(4):
        for i in range(6 * r_):
            lo, hi = max(i * stride, j * sel_block), min(i * stride + block, (j + 1) * sel_block)
            want = max(0, hi - lo) // stride
            e = j - i // r_
            got = w[e, i % r_].item() if 0 <= e < w.shape[0] else 0.0
            assert got == want, (i, j)


def test_decode_precompressed_cache_bf16_and_out_of_order_cache():
    b, h, hkv, lk, d = 1, 8, 2, 300, 64
    gen = torch.Generator().manual_seed(9)
    q = torch.randn(b, h, d, generator=gen).bfloat16()
    k = torch.randn(b, hkv, lk, d, generator=gen).bfloat16()
    v = torch.randn(b, hkv, lk, d, generator=gen).bfloat16()
    gates = torch.rand(b, h, 3, generator=gen)
    kc, vc = compress_blocks(k, PAPER), compress_blocks(v, PAPER)
    out = nsa_decode_triton(q, k, v, gates, PAPER, k_cmp=kc, v_cmp=vc)
    ref, _, _ = nsa_decode_ref(q, k, v, gates, PAPER, k_cmp=kc, v_cmp=vc)
    assert out.dtype == torch.bfloat16
    assert rel_err(out, ref) <= 1e-2
    # a token appended to the cache without updating the compressed cache: refused
    k2, v2 = torch.cat([k, k[:, :, -16:]], 2), torch.cat([v, v[:, :, -16:]], 2)
    with pytest.raises(ValueError, match="^k_cmp"):
        nsa_decode_triton(q, k2, v2, gates, PAPER, k_cmp=kc, v_cmp=vc)
    with pytest.raises(ValueError, match="^q: "):
        nsa_decode_triton(q[:, :, None], k, v, gates, PAPER)


@triton.jit
def _merge_kernel(TOP_IN, CAND, OUT, ROWS: tl.constexpr, N: tl.constexpr, NSP: tl.constexpr, NS: tl.constexpr,
                  PREFILL: tl.constexpr):
    r = tl.arange(0, ROWS)[:, None]
    top = _topk_init(ROWS, NSP, NS)
    if PREFILL:
        top = _topk_merge(top, tl.load(TOP_IN + r * NSP + tl.arange(0, NSP)[None, :]))
    top = _topk_merge(top, tl.load(CAND + r * N + tl.arange(0, N)[None, :]))
    tl.store(OUT + r * NSP + tl.arange(0, NSP)[None, :], top)


def test_topk_merge_keeps_the_largest_keys():
    """Many more candidates than list slots, a list that already holds real keys: the bound on
    the insertion steps (the list's length) loses nothing."""
    gen = torch.Generator().manual_seed(0)
    rows, n, nsp, ns = 4, 64, 8, 5
    keys = torch.randperm(1 << 20, generator=gen)[:rows * (n + nsp)].view(rows, n + nsp).long()
    first, cand = keys[:, :nsp].clone(), keys[:, nsp:].clone()
    first[:, ns:] = -(1 << 40)                     # only ns real keys go into the list first
    cand[1, :] = -cand[1, :] - (1 << 41)           # a row whose candidates are all ineligible
    for prefill in (False, True):
        out = torch.empty(rows, nsp, dtype=torch.long)
        _merge_kernel[(1,)](first, cand, out, ROWS=rows, N=n, NSP=nsp, NS=ns, PREFILL=prefill)
        pool = torch.cat([first[:, :ns], cand], 1) if prefill else cand
        pool = torch.cat([-1 - torch.arange(ns).expand(rows, ns), pool], 1)   # the empty list's sentinels
        want = pool.topk(ns, 1).values.sort(1).values
        assert torch.equal(out[:, :ns].sort(1).values, want)
        assert (out[:, ns:] == torch.iinfo(torch.long).max).all()   # padding slots untouched


def test_decode_kernels_do_not_specialise_on_what_changes_every_step(monkeypatch):
    # Triton compiles one variant per pattern of its int arguments (== 1, divisible by 16), so an
    # argument that follows the cache length would compile new variants while generating; the
    # decode kernels must name every such argument in do_not_specialize
    launches = TritonLaunches(monkeypatch)
    # lengths that cross a compression stride, a selection block and the window
    for lk in (60, 63, 64, 65, 96, 129, 160):
        q, k, v, gates = decode_inputs(1, 4, 2, lk, 64, lk)
        nsa_decode_triton(q, k, v, gates, PAPER)
    varied = set()
    for n in ("_dec_cmp_kernel", "_dec_topk_kernel", "_dec_sparse_kernel", "_dec_combine_kernel"):
        assert len(launches.calls[n]) == 7
        varying, specialised = launches.step_args(n, ignore=("s",))   # strides: multiples of head_dim (64)
        assert not specialised, f"{n}: specialised on {sorted(specialised)}"
        varied |= varying
    assert {"pos", "n_cmp", "window"} <= varied
