"""The Triton decode kernels against the references, on the CPU under the Triton interpreter."""
import os

import pytest

os.environ["TRITON_INTERPRET"] = "1"          # before any triton-dependent import
pytest.importorskip("triton", reason="triton is not installed")

import torch  # noqa: E402

from sparsa.ops.kv_quant import quantize  # noqa: E402
from sparsa.ops.sparse_decode import use_triton  # noqa: E402
from sparsa.ops.sparse_decode.reference import (h2o_victims_ref, paged_decode_ref, quest_page_scores_ref,  # noqa: E402
                                                quest_select_ref, streaming_victims_ref, varlen_decode_ref)
from sparsa.ops.sparse_decode.triton import (LAUNCH, bound_rows, evict_update_triton, group_rows,  # noqa: E402
                                             paged_decode_triton, quest_page_scores_triton, quest_select_triton,
                                             set_launch_defaults, varlen_decode_triton)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def varlen_layout(lengths: list[list[int]], spare: int = 3):
    length = torch.tensor(lengths, dtype=torch.int32)
    cap = length.to(torch.int64) + spare
    start = (cap.flatten().cumsum(0) - cap.flatten()).view(length.shape)
    return start, length, int(cap.sum())


TOL = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}


@pytest.mark.parametrize("h,hkv,d,dtype,quant,splits", [
    (4, 4, 32, torch.float32, None, 1),          # MHA
    (8, 2, 64, torch.float32, None, 3),          # GQA 4, split-K
    (8, 1, 32, torch.bfloat16, None, 2),         # GQA 8
    (16, 1, 32, torch.float16, None, 1),         # GQA 16
    (4, 1, 128, torch.float32, "int8", 2),
    (8, 2, 64, torch.float32, "int4", 2),
    (8, 2, 64, torch.bfloat16, "int4:g16", 1),
    (4, 2, 32, torch.float32, "int8:g8", 4),
])
def test_varlen_kernel_matches_reference(h, hkv, d, dtype, quant, splits):
    gen = torch.Generator().manual_seed(h * 100 + d)
    b = 2
    lens = [[37, 0, 5, 70][:hkv], [1, 66, 19, 3][:hkv]]
    start, length, rows = varlen_layout(lens)
    q = torch.randn(b, h, d, generator=gen).to(dtype)
    k = torch.randn(rows, d, generator=gen).to(dtype)
    v = torch.randn(rows, d, generator=gen).to(dtype)
    if quant:
        k, v = quantize(k, quant), quantize(v, quant)
    logits = torch.full((h // hkv, rows), float("nan"))
    out, lse = varlen_decode_triton(q, k, v, start, length, scale=0.3, logits=logits, block_n=16, num_splits=splits)
    ref, probs = varlen_decode_ref(q, k, v, start, length, scale=0.3, return_probs=True)
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert rel_err(out, ref) <= TOL[dtype]
    # a head with no tokens gives zeros
    for bi in range(b):
        for hi in range(hkv):
            if lens[bi][hi] == 0:
                g = h // hkv
                assert out[bi, hi * g:(hi + 1) * g].abs().max() == 0
    # the logits and lse give back each row's group-summed probabilities
    g = h // hkv
    for bi in range(b):
        for hi in range(hkv):
            n = lens[bi][hi]
            if n == 0:
                continue
            r0 = int(start[bi, hi])
            lg = logits[:, r0:r0 + n]
            p = torch.exp2(lg - lse[bi * hkv + hi, :g, None]).sum(0)
            torch.testing.assert_close(p, probs[bi, hi, :n], atol=TOL[dtype] * 3, rtol=TOL[dtype] * 3)


def test_varlen_dispatch_and_errors():
    start, length, rows = varlen_layout([[4, 9]])
    q = torch.randn(1, 4, 32)
    k, v = torch.randn(rows, 32), torch.randn(rows, 32)
    assert use_triton("triton", q)
    out, _ = varlen_decode_triton(q, k, v, start, length)
    assert rel_err(out, varlen_decode_ref(q, k, v, start, length)) <= 1e-5
    with pytest.raises(ValueError, match="head_dim"):
        use_triton("triton", torch.randn(1, 4, 24))
    # auto falls back to the reference for an unsupported head_dim
    assert not use_triton("auto", torch.randn(1, 4, 24))
    with pytest.raises(TypeError, match="dtype"):
        varlen_decode_triton(q, k.half(), v.half(), start, length)
    with pytest.raises(ValueError, match="start, length"):
        varlen_decode_ref(q, k, v, start, length[:, :1])


def paged_setup(gen, b=2, hkv=2, d=32, page=4, pages=30, seq=(45, 13), dtype=torch.float32):
    table = torch.randperm(pages, generator=gen)[:b * 12].view(b, 12).to(torch.int32)
    rows = pages * hkv * page
    k = torch.randn(rows, d, generator=gen).to(dtype)
    v = torch.randn(rows, d, generator=gen).to(dtype)
    kk = k.float().view(pages, hkv, page, d)
    return table, torch.tensor(seq), k, v, kk.amin(2).to(dtype), kk.amax(2).to(dtype)


@pytest.mark.parametrize("page,nsel,h,quant", [(4, 2, 8, None), (4, 5, 4, "int4"), (8, 20, 8, None),
                                               (5, 3, 4, "int8"), (16, 1, 8, None)])
def test_quest_kernels_match_reference(page, nsel, h, quant):
    gen = torch.Generator().manual_seed(page * 10 + nsel)
    b, d = 2, 32
    table, seq, k, v, kmin, kmax = paged_setup(gen, page=page, seq=(min(45, 12 * page), 13))
    q = torch.randn(b, h, d, generator=gen)
    ref_s = quest_page_scores_ref(q, kmin, kmax, table, seq, page)
    for all_heads in (False, True):             # one program per KV head, or per sequence for all heads
        tri_s = quest_page_scores_triton(q, kmin, kmax, table, seq, page, block_p=4, all_heads=all_heads)
        assert torch.equal(torch.isinf(ref_s), torch.isinf(tri_s))
        fin = torch.isfinite(ref_s)
        torch.testing.assert_close(tri_s[fin], ref_s[fin], atol=1e-4, rtol=1e-5)
    plist_ref = quest_select_ref(ref_s, seq, page, nsel)
    plist, nlist = quest_select_triton(ref_s, seq, page, torch.full((b,), nsel, dtype=torch.int32),
                                       plist_ref.shape[-1])
    assert torch.equal(plist, plist_ref)
    assert torch.equal(nlist, (plist_ref >= 0).sum(-1, dtype=torch.int32))
    if quant:
        k, v = quantize(k, quant), quantize(v, quant)
    out = paged_decode_triton(q, k, v, table, seq, plist, nlist, page_size=page, block_n=16, num_splits=2)
    ref = paged_decode_ref(q, k, v, table, seq, plist_ref, page_size=page)
    assert rel_err(out, ref) <= 1e-5


def test_quest_select_ties_dense_rows_and_per_row_budgets():
    # equal scores: the lower pages win; the current page is listed last
    s = torch.zeros(1, 1, 10)
    s[0, 0, 3] = 1.0
    seq = torch.tensor([41])
    ref = quest_select_ref(s, seq, 4, 3)
    assert ref.tolist() == [[[0, 1, 3, 10]]]
    tri, n = quest_select_triton(s, seq, 4, torch.tensor([3], dtype=torch.int32), 4)
    assert tri.tolist() == ref.tolist() and n.tolist() == [[4]]
    # negative and -0.0 scores order correctly
    s = torch.tensor([[[-1.0, -0.0, 0.0, -3.0, 2.0, -2.5]]])
    tri, _ = quest_select_triton(s, torch.tensor([30]), 4, torch.tensor([3], dtype=torch.int32), 4)
    assert tri.tolist() == quest_select_ref(s, torch.tensor([30]), 4, 3).tolist() == [[[1, 2, 4, 7]]]
    # a sequence whose current page is within the budget reads every page; per-row budgets
    gen = torch.Generator().manual_seed(3)
    scores = torch.randn(2, 3, 16, generator=gen)
    seq = torch.tensor([61, 9])                     # current pages 15 and 2
    nsel = torch.tensor([4, 6], dtype=torch.int32)
    ref = quest_select_ref(scores, seq, 4, nsel)
    tri, _ = quest_select_triton(scores, seq, 4, nsel, ref.shape[-1])
    assert torch.equal(tri, ref)
    assert ref[1, 0].tolist() == [0, 1, 2, -1, -1, -1, -1]


@pytest.mark.parametrize("all_heads", [False, True])
def test_quest_bound_holds_for_every_key(all_heads):
    gen = torch.Generator().manual_seed(5)
    b, h, hkv, d, page = 2, 8, 2, 32, 4
    table, seq, k, v, kmin, kmax = paged_setup(gen, page=page, seq=(48, 48))
    q = torch.randn(b, h, d, generator=gen)
    s = quest_page_scores_triton(q, kmin, kmax, table, seq, page, all_heads=all_heads)
    kk = k.view(-1, hkv, page, d)
    g = h // hkv
    for bi in range(b):
        for hi in range(hkv):
            for p in range(11):
                keys = kk[table[bi, p].long(), hi]                          # (page, d)
                true = (q[bi, hi * g:(hi + 1) * g] @ keys.T).sum(0)        # group-summed q·k per key
                assert bool((true <= s[bi, hi, p] + 1e-4).all())


@pytest.mark.parametrize("quant", [None, "int8", "int4:g16"])
def test_evict_kernels_match_reference(quant):
    gen = torch.Generator().manual_seed(7)
    b, h, hkv, d = 2, 8, 2, 32
    lens = [[9, 14], [4, 12]]
    start, length, rows = varlen_layout(lens, spare=2)
    q = torch.randn(b, h, d, generator=gen)
    k = torch.randn(rows, d, generator=gen)
    v = torch.randn(rows, d, generator=gen)
    if quant:
        k, v = quantize(k, quant), quantize(v, quant)
    pos = torch.full((rows,), -1, dtype=torch.int32)
    for bi in range(b):
        for hi in range(hkv):
            r0 = int(start[bi, hi])
            pos[r0:r0 + lens[bi][hi]] = torch.randperm(20, generator=gen)[:lens[bi][hi]].to(torch.int32)
    score = torch.rand(rows, generator=gen)
    seq = torch.tensor([20, 20])
    heavy, recent = torch.tensor([3, -1]), torch.tensor([6, 6])
    # H2O: the kernel recovers the probabilities from the logits, then evicts
    logits = torch.empty(h // hkv, rows)
    _, lse = varlen_decode_triton(q, k, v, start, length, logits=logits, block_n=16)
    _, probs = varlen_decode_ref(q, k, v, start, length, return_probs=True)
    ref_score = score.clone()
    for bi in range(b):
        for hi in range(hkv):
            r0 = int(start[bi, hi])
            ref_score[r0:r0 + lens[bi][hi]] += probs[bi, hi, :lens[bi][hi]]
    victims = h2o_victims_ref(ref_score, pos, start, length, seq, torch.where(heavy < 0, 10**9, heavy), recent)
    assert (victims[0] >= 0).all() and (victims[1] < 0).all()
    t_len, t_pos, t_score = length.clone(), pos.clone(), score.clone()
    kk = k.map(torch.clone) if quant else k.clone()
    vv = v.map(torch.clone) if quant else v.clone()
    evict_update_triton("h2o", kk, vv, t_pos, start, t_len, seq, heavy, recent, score=t_score, logits=logits,
                        lse=lse, head_dim=d, block=8)
    assert torch.equal(t_len, length - (victims >= 0).to(torch.int32))
    for bi in range(b):
        for hi in range(hkv):
            r0, n = int(start[bi, hi]), lens[bi][hi]
            kept_ref = set(pos[r0:r0 + n].tolist()) - ({int(pos[r0 + victims[bi, hi]])} if victims[bi, hi] >= 0
                                                        else set())
            assert set(t_pos[r0:r0 + int(t_len[bi, hi])].tolist()) == kept_ref
            # scores travel with their tokens
            by_pos = {int(p): float(s) for p, s in zip(pos[r0:r0 + n], ref_score[r0:r0 + n])}
            for p_, s_ in zip(t_pos[r0:r0 + int(t_len[bi, hi])].tolist(), t_score[r0:r0 + int(t_len[bi, hi])]):
                assert abs(by_pos[p_] - float(s_)) <= 1e-5
    # StreamingLLM: the oldest non-sink token goes once it left the window
    sink, window = torch.tensor([2, 2]), torch.tensor([9, 30])
    victims = streaming_victims_ref(pos, start, length, seq, sink, window)
    t_len, t_pos = length.clone(), pos.clone()
    evict_update_triton("streaming", k, v, t_pos, start, t_len, seq, sink, window, head_dim=d, block=8)
    assert torch.equal(t_len, length - (victims >= 0).to(torch.int32))
    assert (victims[1] < 0).all()


def _row_stores(x) -> list[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        return [x]
    return [x.data, x.scale] + ([x.zero] if x.zero is not None else [])


# chunk 4: more chunks per head (25) than the merge handles per step (16)
@pytest.mark.parametrize("chunk,block,max_len", [(16, 8, None), (32, 32, 128), (24, 16, None), (4, 4, None)])
@pytest.mark.parametrize("group", [1, 16])
@pytest.mark.parametrize("quant", [None, "int8", "int4:g16"])
def test_h2o_update_over_chunks_matches_reference_and_one_program(quant, group, chunk, block, max_len):
    gen = torch.Generator().manual_seed(13 + group + chunk)
    b, hkv, d = 2, 2, 32
    lens = [[70, 33], [5, 100]]                     # several chunks per head, one head within a chunk
    start, length, rows = varlen_layout(lens, spare=3)
    k = torch.randn(rows, d, generator=gen)
    v = torch.randn(rows, d, generator=gen)
    if quant:
        k, v = quantize(k, quant), quantize(v, quant)
    seq = torch.tensor([110, 120])
    pos = torch.full((rows,), -1, dtype=torch.int32)
    for bi in range(b):
        for hi in range(hkv):
            r0 = int(start[bi, hi])
            pos[r0:r0 + lens[bi][hi]] = torch.randperm(int(seq[bi]), generator=gen)[:lens[bi][hi]].to(torch.int32)
    # base-2 logits that are small negative integers (lse = 0) and scores in quarters: every
    # probability and sum is exact in any order, and equal scores (ties) are frequent
    patterns = -torch.randint(1, 4, (4, group), generator=gen).float()
    logits = patterns[torch.randint(0, 4, (rows,), generator=gen)].T.contiguous()     # (G, rows)
    lse = torch.zeros(b * hkv, group_rows(group))
    score = torch.randint(0, 3, (rows,), generator=gen).float() * 0.25
    heavy, recent = torch.tensor([10, 60]), torch.tensor([20, 30])

    ref_score = score.clone()
    for bi in range(b):
        for hi in range(hkv):
            r0, n = int(start[bi, hi]), lens[bi][hi]
            ref_score[r0:r0 + n] += torch.exp2(logits[:, r0:r0 + n]).sum(0)
    victims = h2o_victims_ref(ref_score, pos, start, length, seq, heavy, recent)
    assert victims.flatten().tolist().count(-1) == 1 and int(victims[1, 0]) == -1
    ties = 0
    for bi in range(b):
        for hi in range(hkv):
            r0, n = int(start[bi, hi]), lens[bi][hi]
            cand = pos[r0:r0 + n].long() <= int(seq[bi] - recent[bi])
            sc = ref_score[r0:r0 + n][cand]
            ties += int((sc == sc.min()).sum()) > 1
    assert ties >= 2                                # the tie rule decides at least two victims
    # expected state: the head's last token moves into the victim's slot
    exp_len, exp_pos, exp_score = length.clone(), pos.clone(), ref_score.clone()
    exp_stores = [x.clone() for x in _row_stores(k) + _row_stores(v)]
    for bi in range(b):
        for hi in range(hkv):
            if victims[bi, hi] >= 0:
                r0, n = int(start[bi, hi]), lens[bi][hi]
                dst, src = r0 + int(victims[bi, hi]), r0 + n - 1
                for x in [exp_pos, exp_score, *exp_stores]:
                    x[dst] = x[src]
                exp_len[bi, hi] -= 1

    def run(chunk_, block_, max_len_):
        t_len, t_pos, t_score = length.clone(), pos.clone(), score.clone()
        kk = k.map(torch.clone) if quant else k.clone()
        vv = v.map(torch.clone) if quant else v.clone()
        evict_update_triton("h2o", kk, vv, t_pos, start, t_len, seq, heavy, recent, score=t_score, logits=logits,
                            lse=lse, head_dim=d, block=block_, chunk=chunk_, max_len=max_len_)
        return [t_len, t_pos, t_score, *_row_stores(kk), *_row_stores(vv)]

    chunked = run(chunk, block, max_len)
    single = run(1 << 20, block, None)              # one program per head scans it whole
    expected = [exp_len, exp_pos, exp_score, *exp_stores]
    for got, one, want in zip(chunked, single, expected):
        assert torch.equal(got, one)
        assert torch.equal(got, want)


@pytest.mark.parametrize("quant", [None, "int8", "int8:g16", "int4", "int4:g16"])
def test_append_kernel_writes_what_the_torch_path_writes(quant):
    import copy

    from sparsa.cache import PagedKVCache, VarlenKVCache
    gen = torch.Generator().manual_seed(11)
    b, hkv, L, d = 2, 2, 21, 64
    k = torch.randn(b, hkv, L + 1, d, generator=gen) * 3
    v = torch.randn(b, hkv, L + 1, d, generator=gen)
    for cache in (VarlenKVCache.from_dense(k[:, :, :L], v[:, :, :L], quant=quant, track_scores=True),
                  PagedKVCache.from_dense(k[:, :, :L], v[:, :, :L], page_size=4, quant=quant)):
        a, r = copy.deepcopy(cache), copy.deepcopy(cache)
        a.append(k[:, :, L], v[:, :, L], backend="triton")
        r.append(k[:, :, L], v[:, :, L], backend="reference")
        assert torch.equal(a.seq_lens, r.seq_lens)
        names = ["k", "v", "pos", "score", "length"] if isinstance(cache, VarlenKVCache) else ["k", "v", "kbounds",
                                                                                                "kscale"]
        for name in names:
            x, y = getattr(a, name), getattr(r, name)
            if x is None:
                assert y is None, name
            elif hasattr(x, "data") and not isinstance(x, torch.Tensor):
                for t1, t2 in ((x.data, y.data), (x.scale, y.scale), (x.zero, y.zero)):
                    assert t1 is None or torch.equal(t1, t2), name
            else:
                assert torch.equal(x, y), name


def test_heads_of_very_different_lengths_split_by_the_average():
    gen = torch.Generator().manual_seed(12)
    start, length, rows = varlen_layout([[300, 3], [17, 0]])
    q = torch.randn(2, 8, 32, generator=gen)
    k, v = torch.randn(rows, 32, generator=gen), torch.randn(rows, 32, generator=gen)
    out, _ = varlen_decode_triton(q, k, v, start, length, avg_len=80.0, block_n=16)
    assert rel_err(out, varlen_decode_ref(q, k, v, start, length)) <= 1e-5


# ----------------------------------------------------------------------------- int8 page bounds, radix selection

@pytest.mark.parametrize("all_heads", [False, True])
def test_quest_scores_kernel_reads_interleaved_int8_and_native_bounds(all_heads):
    from sparsa.cache import PagedKVCache
    gen = torch.Generator().manual_seed(21)
    b, h, hkv, d, page = 2, 8, 2, 64, 4
    k = torch.randn(b, hkv, 45, d, generator=gen) * 2
    q = torch.randn(b, h, d, generator=gen)
    for dtype, quant, bounds in ((torch.float32, None, "int8"), (torch.bfloat16, None, "int8"),
                                 (torch.bfloat16, None, "native"), (torch.float32, "int4", "int8")):
        c = PagedKVCache.from_dense(k.to(dtype), k.to(dtype), page_size=page, lengths=[45, 30], quant=quant,
                                    bounds=bounds, reserve=5)
        assert c.kmin.data_ptr() + d * c.kbounds.element_size() == c.kmax.data_ptr()      # min, max side by side
        ref = quest_page_scores_ref(q, c.kmin, c.kmax, c.page_table, c.seq_lens, page, scale=c.kscale)
        for launch in ({"block_p": 4, "pages_per_prog": 8}, {}):
            tri = quest_page_scores_triton(q, c.kmin, c.kmax, c.page_table, c.seq_lens, page, scale=c.kscale,
                                           all_heads=all_heads, **launch)
            assert torch.equal(torch.isinf(ref), torch.isinf(tri))
            fin = torch.isfinite(ref)
            torch.testing.assert_close(tri[fin], ref[fin], atol=1e-4, rtol=1e-5)
        # the max_pages bound cuts the output width
        part = quest_page_scores_triton(q, c.kmin, c.kmax, c.page_table, c.seq_lens, page, scale=c.kscale,
                                        max_pages=12, all_heads=all_heads)
        assert part.shape[-1] == 12 and torch.equal(torch.isinf(part), torch.isinf(ref[..., :12]))
    with pytest.raises(ValueError, match="scale"):
        quest_page_scores_triton(q, c.kmin, c.kmax, c.page_table, c.seq_lens, page, all_heads=all_heads)
    with pytest.raises(ValueError, match="scale"):
        quest_page_scores_ref(q, c.kmin, c.kmax, c.page_table, c.seq_lens, page)


def _select_inputs(gen, b, hkv, mp, kind):
    if kind == "ties":          # a handful of distinct values: many ties at the threshold
        vals = torch.tensor([-2.0, -0.0, 0.0, 0.5, 1.0, 3.0])
        return vals[torch.randint(0, 6, (b, hkv, mp), generator=gen)]
    if kind == "close":         # values differing in their last bits: every radix pass matters
        base = torch.full((b, hkv, mp), 1.2345678)
        return base + torch.randint(0, 40, (b, hkv, mp), generator=gen) * torch.finfo(torch.float32).eps
    return torch.randn(b, hkv, mp, generator=gen) * 10 ** torch.randint(-3, 4, (b, hkv, 1), generator=gen)


@pytest.mark.parametrize("kind", ["ties", "close", "wide"])
@pytest.mark.parametrize("mp,page", [(40, 4), (300, 16), (7, 1)])
def test_quest_radix_select_matches_the_reference(kind, mp, page):
    gen = torch.Generator().manual_seed(mp + len(kind))
    b, hkv = 3, 2
    scores = _select_inputs(gen, b, hkv, mp, kind)
    seq = torch.tensor([mp * page, (mp // 2) * page + 1, 3 * page])         # current pages mp-1, mp//2, 3
    for nsel in ([1, 1, 1], [5, 2, 6], [mp - 2, mp // 2, 3], [mp, 1, 2]):
        n = torch.tensor([max(1, x) for x in nsel], dtype=torch.int32)
        ref = quest_select_ref(scores, seq, page, n)
        tri, cnt = quest_select_triton(scores, seq, page, n, ref.shape[-1])
        assert torch.equal(tri, ref), (kind, nsel)
        assert torch.equal(cnt, (ref >= 0).sum(-1, dtype=torch.int32))


def test_quest_radix_select_against_sorting_many_rows():
    """Hypothesis-free sweep: random budgets and tie-heavy rows, the top-k set against a stable sort."""
    gen = torch.Generator().manual_seed(33)
    b, hkv, mp, page = 4, 4, 96, 2
    scores = torch.randint(-6, 6, (b, hkv, mp), generator=gen).float() / 4
    seq = torch.tensor([mp * page, 61, 150, 9])
    n = torch.tensor([17, 3, 74, 1], dtype=torch.int32)
    ref = quest_select_ref(scores, seq, page, n)
    tri, _ = quest_select_triton(scores, seq, page, n, ref.shape[-1])
    assert torch.equal(tri, ref)
    # the set is the stable top-k: every chosen page scores >= every skipped candidate
    for bi in range(b):
        cur = (int(seq[bi]) - 1) // page
        if cur <= int(n[bi]):
            continue
        for hi in range(hkv):
            chosen = [int(x) for x in tri[bi, hi, :int(n[bi])]]
            rest = [p for p in range(cur) if p not in chosen]
            assert min(float(scores[bi, hi, p]) for p in chosen) >= max(float(scores[bi, hi, p]) for p in rest)


@pytest.mark.parametrize("dtype,quant,page", [(torch.bfloat16, None, 4), (torch.float32, None, 5),
                                              (torch.float32, None, 1), (torch.float32, "int8", 4),
                                              (torch.bfloat16, "int4", 3), (torch.float32, "int4:g16", 4)])
def test_append_kernel_int8_bounds_equal_the_torch_path(dtype, quant, page):
    """Appends across page boundaries: codes, scales and the int8 page bounds (computed when a
    page completes) are bit-identical between the kernel and the PyTorch path."""
    import copy

    from sparsa.cache import PagedKVCache
    gen = torch.Generator().manual_seed(41)
    b, hkv, L, d = 2, 2, 9, 64
    k = (torch.randn(b, hkv, L + 8, d, generator=gen) * 3).to(dtype)
    v = torch.randn(b, hkv, L + 8, d, generator=gen).to(dtype)
    c = PagedKVCache.from_dense(k[:, :, :L], v[:, :, :L], page_size=page, quant=quant, bounds="int8", reserve=2)
    a, r = copy.deepcopy(c), copy.deepcopy(c)
    for t in range(L, L + 8):
        a.append(k[:, :, t], v[:, :, t], backend="triton")
        r.append(k[:, :, t], v[:, :, t], backend="reference")
        assert torch.equal(a.kbounds, r.kbounds) and torch.equal(a.kscale, r.kscale), t
    # the completed pages hold exactly the bounds a cache built from all the tokens at once holds
    full = PagedKVCache.from_dense(k, v, page_size=page, quant=quant, bounds="int8")
    for bi in range(b):
        for p in range((L + 8) // page):
            pa, pf = int(a.page_table[bi, p]), int(full.page_table[bi, p])
            assert torch.equal(a.kbounds[pa], full.kbounds[pf]) and torch.equal(a.kscale[pa], full.kscale[pf])


# (bf16 bounds widened from dequantized keys are left out: the interpreter rounds float32 to
# bfloat16 by truncation where the GPU rounds to nearest)
@pytest.mark.parametrize("dtype,quant", [(torch.bfloat16, None), (torch.float16, None), (torch.float16, "int8")])
def test_append_kernel_native_half_bounds_equal_the_torch_path(dtype, quant):
    import copy

    from sparsa.cache import PagedKVCache
    gen = torch.Generator().manual_seed(43)
    k = torch.randn(2, 2, 30, 32, generator=gen).to(dtype)
    c = PagedKVCache.from_dense(k[:, :, :21], k[:, :, :21], 8, quant=quant, bounds="native")
    a, r = copy.deepcopy(c), copy.deepcopy(c)
    for t in range(21, 30):
        a.append(k[:, :, t], k[:, :, t], backend="triton")
        r.append(k[:, :, t], k[:, :, t], backend="reference")
        assert torch.equal(a.kbounds, r.kbounds), t


# ----------------------------------------------------------------------------- scoring tiles, early-exit selection

@pytest.mark.parametrize("all_heads", [False, True])
def test_quest_scores_decode_every_int8_code_exactly(all_heads):
    """int8 codes are widened from int32 words (byte position 0..3 of a word, min and max
    halves): a one-hot query reads one code back, exactly, for every code value."""
    d, hkv, page = 32, 1, 2
    codes = torch.arange(-128, 128, dtype=torch.int16).to(torch.int8)          # 256 codes
    pages = 256
    kb = torch.zeros(pages, hkv, 2, d, dtype=torch.int8)
    for ch in range(2 * d):                     # page i holds code (i + ch) at channel ch
        kb.view(pages, 2 * d)[:, ch] = codes.roll(-ch)
    scale = torch.ones(pages, hkv)
    table = torch.arange(pages, dtype=torch.int32)[None].repeat(8, 1)
    seq = torch.full((8,), pages * page + 1)
    chans = [(0, 1.0), (5, -1.0), (d + 2, 1.0), (d + 7, -1.0), (3, 1.0), (d + 1, 1.0), (6, -1.0), (d - 1, 1.0)]
    q = torch.zeros(8, 1, d)
    for i, (ch, sign) in enumerate(chans):
        q[i, 0, ch % d] = sign
    s = quest_page_scores_triton(q, kb[:, :, 0], kb[:, :, 1], table, seq, page, scale=scale, max_pages=pages,
                                 all_heads=all_heads)
    ref = quest_page_scores_ref(q, kb[:, :, 0], kb[:, :, 1], table, seq, page, scale=scale)
    assert torch.equal(s, ref)
    for i, (ch, sign) in enumerate(chans):
        # a positive q reads the max code of its channel, a negative one minus the min code
        half = 1 if sign > 0 else 0
        assert torch.equal(s[i, 0], sign * kb[:, 0, half, ch % d].float())


@pytest.mark.parametrize("d,h,hkv,bounds", [(32, 4, 4, "int8"), (128, 8, 1, "int8"), (256, 4, 2, "int8"),
                                             (64, 16, 1, "native"), (128, 6, 2, "int8")])
@pytest.mark.parametrize("all_heads", [False, True])
def test_quest_scores_tiles_separate_and_interleaved_bounds(d, h, hkv, bounds, all_heads):
    """Interleaved bounds are read in place, separate kmin / kmax through a copy; head dims
    32..256, groups 1..16 (6: not a power of two), sequences of different lengths, several
    pages per program and loop steps."""
    from sparsa.cache import PagedKVCache
    gen = torch.Generator().manual_seed(d + h)
    k = torch.randn(3, hkv, 77, d, generator=gen) * 3
    q = torch.randn(3, h, d, generator=gen)
    c = PagedKVCache.from_dense(k, k, page_size=4, lengths=[77, 30, 5], bounds=bounds, reserve=3)
    ref = quest_page_scores_ref(q, c.kmin, c.kmax, c.page_table, c.seq_lens, 4, scale=c.kscale)
    sep = (c.kmin.contiguous(), c.kmax.contiguous())
    for kmin, kmax in ((c.kmin, c.kmax), sep):
        for launch in ({"block_p": 2, "pages_per_prog": 8}, {"block_p": 16, "pages_per_prog": 16}, {}):
            tri = quest_page_scores_triton(q, kmin, kmax, c.page_table, c.seq_lens, 4, scale=c.kscale,
                                           all_heads=all_heads, **launch)
            assert torch.equal(torch.isinf(ref), torch.isinf(tri))
            fin = torch.isfinite(ref)
            torch.testing.assert_close(tri[fin], ref[fin], atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("h,hkv,dtype", [(3, 3, torch.int8), (12, 3, torch.int8), (40, 5, torch.float32),
                                          (8, 8, torch.bfloat16), (32, 8, torch.int8), (24, 3, torch.float16)])
def test_quest_scores_all_heads_padded_rows_and_launch_default(h, hkv, dtype):
    """Every KV head in one program against the reference and the per-head kernel: KV head
    counts that are not powers of two, groups 1, 4, 8, int8 codes with their scale and native
    bounds, interleaved rows with gaps between heads and pages (strided addressing) and
    contiguous ones, an odd page count, pages at and past the current page -inf; and
    ``all_heads`` taken from the launch defaults."""
    gen = torch.Generator().manual_seed(h * 10 + hkv)
    b, d, page, pages = 2, 32, 4, 23
    table = torch.randperm(pages, generator=gen)[:2 * 11].view(b, 11).to(torch.int32)
    seq = torch.tensor([37, 10])                                   # current pages 9 and 2
    # rows [min, max, gap] per head, one spare head per page: strides (3 D (hkv + 1), 3 D, 1)
    raw = torch.randn(pages, hkv + 1, 3, d, generator=gen) * 3
    if dtype == torch.int8:
        raw = raw.mul(20).round().clamp(-128, 127)
    kb = raw.to(dtype)
    scale = torch.rand(pages, hkv, generator=gen) + 0.5 if dtype == torch.int8 else None
    q = torch.randn(b, h, d, generator=gen)
    for kmin, kmax in ((kb[:, :hkv, 0], kb[:, :hkv, 1]), (kb[:, :hkv, 0].contiguous(), kb[:, :hkv, 1].contiguous())):
        rows = bound_rows(kmin, kmax)                              # gaps: read in place, strided
        assert (rows.stride(1) == rows.shape[2]) == kmin.is_contiguous()
        ref = quest_page_scores_ref(q, kmin, kmax, table, seq, page, scale=scale)
        assert bool(torch.isinf(ref[0, :, 9:]).all()) and bool(torch.isinf(ref[1, :, 2:]).all())
        fin = torch.isfinite(ref)
        per_head = quest_page_scores_triton(q, kmin, kmax, table, seq, page, scale=scale, all_heads=False)
        for launch in ({"block_p": 2, "pages_per_prog": 5}, {"block_p": 1, "pages_per_prog": 3},
                       {"block_p": 8, "pages_per_prog": 8}, {}):
            tri = quest_page_scores_triton(q, kmin, kmax, table, seq, page, scale=scale, all_heads=True, **launch)
            assert tri.shape == ref.shape and torch.equal(torch.isinf(ref), torch.isinf(tri))
            torch.testing.assert_close(tri[fin], ref[fin], atol=1e-4, rtol=1e-5)
            torch.testing.assert_close(tri[fin], per_head[fin], atol=1e-4, rtol=1e-5)
        part = quest_page_scores_triton(q, kmin, kmax, table, seq, page, scale=scale, max_pages=7, all_heads=True)
        assert part.shape[-1] == 7 and torch.equal(torch.isinf(part), torch.isinf(ref[..., :7]))
    kind = "quest_scores" if dtype == torch.int8 else "quest_scores_native"   # defaults by bounds dtype
    saved = dict(LAUNCH[kind])
    try:
        for all_heads in (1, 0):
            set_launch_defaults(kind, all_heads=all_heads, pages_per_prog=4, tile_bytes=2048)
            tri = quest_page_scores_triton(q, kmin, kmax, table, seq, page, scale=scale)
            torch.testing.assert_close(tri[fin], ref[fin], atol=1e-4, rtol=1e-5)
            assert torch.equal(torch.isinf(ref), torch.isinf(tri))
    finally:
        LAUNCH[kind].update(saved)
    with pytest.raises(ValueError, match="unknown"):
        set_launch_defaults("quest_scores", all_head=1)


def test_quest_select_edge_rows():
    """-inf among the candidates, rows of different lengths, budgets at and past the candidate
    count, a scores width equal to the largest current page (a power of two: no padding), and
    distinct scores (the search stops early) next to all-equal rows (every pass runs)."""
    gen = torch.Generator().manual_seed(61)
    b, hkv, mp, page = 4, 3, 64, 4
    scores = torch.randn(b, hkv, mp, generator=gen)
    scores[0, 0, ::3] = float("-inf")
    scores[1, 1] = 0.25                                     # all equal: ties to the lower pages
    scores[1, 2, :40] = float("-inf")
    scores[2, 0] = -0.0
    scores[2, 0, 7] = 0.0
    seq = torch.tensor([mp * page + 1, 150, mp * page, 23])  # current pages 64 (= W), 37, 63, 5
    for nsel in ([3, 3, 3, 3], [40, 36, 63, 5], [64, 37, 70, 1], [1, 2, 62, 4]):
        n = torch.tensor(nsel, dtype=torch.int32)
        ref = quest_select_ref(scores, seq, page, n)
        tri, cnt = quest_select_triton(scores, seq, page, n, ref.shape[-1])
        assert torch.equal(tri, ref), nsel
        assert torch.equal(cnt, (ref >= 0).sum(-1, dtype=torch.int32))
        if nsel[0] == 3:
            # every -inf page loses to the finite ones, and -inf ties go to the lower pages
            assert all(p % 3 for p in tri[0, 0, :3].tolist())
