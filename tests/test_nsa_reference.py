"""NSA reference op against a loop-over-tokens implementation written here."""
import math

import pytest
import torch

from sparsa.ops.dense.reference import dense_attention
from sparsa.ops.nsa import (CompressionParams, NSAConfig, compress_blocks, nsa_attention_ref, nsa_decode_ref,
                            nsa_pairs_per_row, overlap_weights)

from ._util import rel_err

# one free choice besides the forced first and current blocks
SMALL = NSAConfig(block=8, stride=4, sel_block=16, n_select=3, window=20, n_forced_init=1, n_forced_local=1)
# the paper's forced blocks (first + 2 local) and two free choices
SMALL_PAPER_FORCED = NSAConfig(block=8, stride=4, sel_block=16, n_select=5, window=20)


def _phi(blk, prm):
    """One compressed token from a (block, D) float64 block."""
    if prm is None:
        return blk.mean(0)
    x = (blk + prm.pos.double()).reshape(-1)
    hid = x @ prm.w1.double() + prm.b1.double()
    hid = 0.5 * hid * (1.0 + torch.erf(hid / math.sqrt(2.0)))
    return hid @ prm.w2.double() + prm.b2.double()


def _attend(qv, keys, vals, scale):
    if len(keys) == 0:
        return torch.zeros_like(qv)
    s = torch.stack([qv @ kk for kk in keys]) * scale
    p = torch.softmax(s, 0)
    return sum(p[i] * vals[i] for i in range(len(vals)))


def loop_nsa(q, k, v, gates, cfg, ck=None, cv=None, scale=None):
    """Token-by-token NSA in float64. Returns (out, {(b, kv_head, row): chosen blocks}, pair counts)."""
    q, k, v, gates = q.double(), k.double(), v.double(), gates.double()
    bsz, h, lq, d = q.shape
    hkv, s_len = k.shape[1], k.shape[2]
    grp = h // hkv
    scale = d ** -0.5 if scale is None else scale
    bl, st, sb = cfg.block, cfg.stride, cfg.sel_block
    out = torch.zeros_like(q)
    chosen = {}
    counts = [0, 0, 0]
    for b in range(bsz):
        for kh in range(hkv):
            kc, vc = [], []
            i = 0
            while i * st + bl <= s_len:
                kc.append(_phi(k[b, kh, i * st:i * st + bl], ck))
                vc.append(_phi(v[b, kh, i * st:i * st + bl], cv))
                i += 1
            for r in range(lq):
                p = s_len - lq + r
                vis = [i for i in range(len(kc)) if i * st + bl - 1 <= p]
                heads = list(range(kh * grp, (kh + 1) * grp))
                o_cmp, psum = {}, [0.0] * len(vis)
                for hh in heads:
                    if vis:
                        sc = torch.stack([q[b, hh, r] @ kc[i] for i in vis]) * scale
                        pr = torch.softmax(sc, 0)
                        o_cmp[hh] = sum(pr[n] * vc[i] for n, i in enumerate(vis))
                        for n in range(len(vis)):
                            psum[n] += float(pr[n])
                    else:
                        o_cmp[hh] = torch.zeros(d, dtype=torch.float64)
                cur = p // sb
                score = []
                for j in range(cur + 1):
                    tot = 0.0
                    for n, i in enumerate(vis):
                        ov = max(0, min(i * st + bl, (j + 1) * sb) - max(i * st, j * sb))
                        tot += psum[n] * ov / st
                    score.append(tot)
                forced = [j for j in range(cur + 1) if j < cfg.n_forced_init or j > cur - cfg.n_forced_local]
                rest = sorted((j for j in range(cur + 1) if j not in forced), key=lambda j: (-score[j], j))
                sel = sorted(forced + rest[:max(0, cfg.n_select - len(forced))])
                chosen[(b, kh, r)] = sel
                keys_s = [t for j in sel for t in range(j * sb, min((j + 1) * sb, p + 1))]
                keys_w = list(range(max(0, p - cfg.window + 1), p + 1))
                counts[0] += len(vis) * grp
                counts[1] += len(keys_s) * grp
                counts[2] += len(keys_w) * grp
                for hh in heads:
                    o_s = _attend(q[b, hh, r], [k[b, kh, t] for t in keys_s], [v[b, kh, t] for t in keys_s], scale)
                    o_w = _attend(q[b, hh, r], [k[b, kh, t] for t in keys_w], [v[b, kh, t] for t in keys_w], scale)
                    g = gates[b, hh, r]
                    out[b, hh, r] = g[0] * o_cmp[hh] + g[1] * o_s + g[2] * o_w
    return out, chosen, counts


def _inputs(bsz, h, hkv, lq, lk, d, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(bsz, h, lq, d, generator=g, dtype=dtype)
    k = torch.randn(bsz, hkv, lk, d, generator=g, dtype=dtype)
    v = torch.randn(bsz, hkv, lk, d, generator=g, dtype=dtype)
    gates = torch.rand(bsz, h, lq, 3, generator=g, dtype=dtype)
    return q, k, v, gates


def _params(cfg, d, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return CompressionParams.random(cfg.block, d, 16, generator=g, dtype=dtype)


@pytest.mark.parametrize("h,hkv,lq,lk,d,learned,cfg", [
    (2, 2, 157, 157, 64, False, SMALL),                 # GQA group 1
    (8, 2, 61, 157, 64, True, SMALL_PAPER_FORCED),      # group 4, queries are the last 61 positions
    (16, 1, 157, 157, 64, True, SMALL),                 # group 16
    (4, 1, 45, 45, 128, False, SMALL_PAPER_FORCED),     # head_dim 128
])
def test_matches_loop_implementation(h, hkv, lq, lk, d, learned, cfg):
    q, k, v, gates = _inputs(2, h, hkv, lq, lk, d, seed=h + lq)
    ck = _params(cfg, d, 1) if learned else None
    cv = _params(cfg, d, 2) if learned else None
    out, aux = nsa_attention_ref(q, k, v, gates, cfg, compress_k=ck, compress_v=cv, return_aux=True)
    ref, chosen, counts = loop_nsa(q, k, v, gates, cfg, ck, cv)
    assert rel_err(out, ref) < 1e-10
    for (b, kh, r), sel in chosen.items():
        got = [int(j) for j in aux.block_indices[b, kh, r] if j >= 0]
        assert got == sel, (b, kh, r)
    assert [float(aux.pairs_cmp.sum()), float(aux.pairs_slc.sum()), float(aux.pairs_win.sum())] == counts
    # the closed-form counts used for budgets agree (own block always chosen)
    pos = torch.arange(lk - lq, lk)
    assert [int(t.sum()) * 2 * h for t in nsa_pairs_per_row(cfg, pos)] == counts


def test_float32_matches_loop_and_other_forced_counts():
    cfg = NSAConfig(block=8, stride=4, sel_block=8, n_select=4, window=5, n_forced_init=0, n_forced_local=0)
    q, k, v, gates = _inputs(2, 4, 2, 53, 53, 64, dtype=torch.float32, seed=7)
    out = nsa_attention_ref(q, k, v, gates, cfg)
    assert out.dtype == torch.float32
    assert rel_err(out, loop_nsa(q, k, v, gates, cfg)[0]) < 1e-5


def test_overlap_weights_paper_and_fla_geometry():
    w = overlap_weights(NSAConfig(), 12, 3)
    assert w[:, 2].tolist() == [0] * 7 + [1, 2, 2, 2, 1]
    assert w[:, 1].tolist() == [0, 0, 0, 1, 2, 2, 2, 1, 0, 0, 0, 0]
    fla = NSAConfig(block=64, stride=64, sel_block=64)
    assert torch.equal(overlap_weights(fla, 5, 5), torch.eye(5))


def test_selection_alone_at_full_budget_is_dense():
    cfg = NSAConfig(block=8, stride=4, sel_block=16, n_select=10, window=3)
    q, k, v, _ = _inputs(2, 8, 2, 100, 157, 64, dtype=torch.float32, seed=3)
    gates = torch.tensor([0.0, 1.0, 0.0]).expand(2, 8, 100, 3)
    out = nsa_attention_ref(q, k, v, gates, cfg)
    assert rel_err(out, dense_attention(q, k, v)) < 1e-5


@pytest.mark.parametrize("branch, cfg", [
    (1, NSAConfig(block=16, stride=8, sel_block=16, n_select=8, window=32, n_forced_init=1, n_forced_local=1)),
    (2, NSAConfig(block=16, stride=8, sel_block=16, n_select=2, window=128, n_forced_init=1, n_forced_local=1)),
])
def test_a_branch_covering_the_context_trains_as_causal_attention(branch, cfg):
    """Selection with every block chosen, or a window as long as the sequence, alone in the gate:
    the output and the gradients of q, k, v are causal attention's (float64, so to rounding)."""
    from sparsa.ops.nsa import nsa_attention

    q, k, v, _ = _inputs(2, 4, 2, 128, 128, 16, seed=5)
    for t in (q, k, v):
        t.requires_grad_(True)
    gates = torch.zeros(2, 4, 128, 3, dtype=torch.float64)
    gates[..., branch] = 1.0
    w = torch.randn(2, 4, 128, 16, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    got = torch.autograd.grad((nsa_attention(q, k, v, gates, cfg) * w).sum(), (q, k, v))
    want = torch.autograd.grad((dense_attention(q, k, v) * w).sum(), (q, k, v))
    for a, b in zip(got, want):
        assert rel_err(a, b) < 1e-10


def test_short_sequence_has_no_compressed_token_and_no_nan():
    q, k, v, gates = _inputs(2, 4, 1, 5, 5, 64, dtype=torch.float32)
    q.requires_grad_(True)
    out, aux = nsa_attention_ref(q, k, v, gates, SMALL, return_aux=True)
    assert torch.isfinite(out).all()
    assert torch.count_nonzero(aux.o_cmp) == 0 and float(aux.pairs_cmp.sum()) == 0
    out.sum().backward()
    assert torch.isfinite(q.grad).all()


def test_gradients_reach_every_input():
    q, k, v, _ = _inputs(2, 8, 2, 70, 70, 64, dtype=torch.float32, seed=5)
    logits = torch.randn(2, 8, 70, 3)
    ck, cv = _params(SMALL, 64, 1, torch.float32), _params(SMALL, 64, 2, torch.float32)
    leaves = [q, k, v, logits, *vars(ck).values(), *vars(cv).values()]
    for t in leaves:
        t.requires_grad_(True)
    out = nsa_attention_ref(q, k, v, torch.sigmoid(logits), SMALL, compress_k=ck, compress_v=cv)
    (out * torch.randn_like(out)).sum().backward()
    for t in leaves:
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0


def test_gradcheck_float64():
    cfg = NSAConfig(block=4, stride=2, sel_block=4, n_select=3, window=5, n_forced_init=1, n_forced_local=1)
    q, k, v, _ = _inputs(1, 2, 1, 19, 19, 4, seed=11)
    logits = torch.randn(1, 2, 19, 3, dtype=torch.float64)
    ck = CompressionParams.random(4, 4, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    tensors = [q, k, v, logits, ck.pos, ck.w1, ck.b1, ck.w2, ck.b2]
    for t in tensors:
        t.requires_grad_(True)

    def fn(q, k, v, logits, pos, w1, b1, w2, b2):
        prm = CompressionParams(pos, w1, b1, w2, b2)
        return nsa_attention_ref(q, k, v, torch.sigmoid(logits), cfg, compress_k=prm)

    assert torch.autograd.gradcheck(fn, tensors, eps=1e-6, atol=1e-5, fast_mode=True)


def test_compress_blocks_counts_and_mean():
    x = torch.arange(2 * 1 * 37 * 2, dtype=torch.float32).view(2, 1, 37, 2)
    c = compress_blocks(x, SMALL)
    assert c.shape == (2, 1, SMALL.n_compressed(37), 2) == (2, 1, 8, 2)
    assert torch.allclose(c[1, 0, 3], x[1, 0, 12:20].mean(0))
    assert compress_blocks(x[:, :, :7], SMALL).shape[2] == 0


@pytest.mark.parametrize("learned", [False, True])
def test_decode_matches_last_row(learned):
    q, k, v, gates = _inputs(2, 8, 2, 97, 97, 64, seed=9)
    ck = _params(SMALL, 64, 1) if learned else None
    out, aux = nsa_attention_ref(q, k, v, gates, SMALL, compress_k=ck, return_aux=True)
    o1, tokens_idx, read = nsa_decode_ref(q[:, :, -1], k, v, gates[:, :, -1], SMALL, compress_k=ck)
    assert rel_err(o1, out[:, :, -1]) < 1e-12
    p = 96
    per_row = [int(t[-1]) for t in nsa_pairs_per_row(SMALL, torch.tensor([p]))]
    assert torch.all(read == sum(per_row))
    assert tokens_idx.shape == (2, 2, SMALL.n_select * SMALL.sel_block + SMALL.window)
    sel = tokens_idx[..., :SMALL.n_select * SMALL.sel_block]
    blocks = {int(t) // SMALL.sel_block for t in sel[0, 0] if t >= 0}
    assert blocks == {int(j) for j in aux.block_indices[0, 0, -1] if j >= 0}


def test_invalid_config_names_the_field():
    with pytest.raises(ValueError, match="^stride"):
        NSAConfig(block=30, stride=16)
    with pytest.raises(ValueError, match="^stride"):
        NSAConfig(block=32, stride=16, sel_block=40)
    with pytest.raises(ValueError, match="^n_select"):
        NSAConfig(n_select=2)
    with pytest.raises(ValueError, match="^n_select"):
        NSAConfig(n_select=1, n_forced_init=1, n_forced_local=1)
    with pytest.raises(ValueError, match="^window"):
        NSAConfig(window=-1)
    with pytest.raises(TypeError, match="^block"):
        NSAConfig(block=32.0)


def test_bad_inputs_name_the_argument():
    q, k, v, gates = _inputs(1, 2, 1, 10, 10, 8)
    with pytest.raises(ValueError, match="^gates"):
        nsa_attention_ref(q, k, v, gates[..., :2], SMALL)
    with pytest.raises(ValueError, match="^k_cmp"):
        nsa_attention_ref(q, k, v, gates, SMALL, k_cmp=torch.zeros(1, 1, 3, 8), v_cmp=torch.zeros(1, 1, 3, 8))
    with pytest.raises(ValueError, match="^compress_k.pos"):
        prm = _params(SMALL, 8, 0)
        prm.pos = torch.zeros(3, 8, dtype=torch.float64)
        nsa_attention_ref(q, k, v, gates, SMALL, compress_k=prm)
    with pytest.raises(TypeError, match="^cfg"):
        nsa_attention_ref(q, k, v, gates, {"block": 8})
