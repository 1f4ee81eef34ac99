"""VarlenKVCache: layout, growth, eviction and compaction on the device, memory held, bad input."""
from __future__ import annotations

import pytest
import torch

from sparsa.cache import VarlenKVCache, dense_cache_bytes
from sparsa.ops.kv_quant import dequantize, quantize

from ._util import rel_err


def make(b=2, hkv=3, L=40, d=16, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, hkv, L, d, generator=g).to(dtype), torch.randn(b, hkv, L, d, generator=g).to(dtype))


def kept_sets(cache: VarlenKVCache) -> list[list[set[int]]]:
    pos = cache.positions()
    return [[{int(p) for p in pos[b, h] if p >= 0} for h in range(pos.shape[1])] for b in range(pos.shape[0])]


def test_from_dense_keeps_exactly_the_listed_tokens_per_head():
    k, v = make()
    keep = torch.tensor([[[0, 5, 7, -1], [3, -1, -1, -1], [39, 1, 2, 20]],
                         [[-1, -1, -1, -1], [10, 11, 12, 13], [4, 8, -1, -1]]])
    c = VarlenKVCache.from_dense(k, v, keep, reserve=4)
    assert c.length.tolist() == [[3, 1, 4], [0, 4, 2]]
    assert kept_sets(c)[0][2] == {1, 2, 20, 39}
    kd, vd, pos = c.to_dense()
    for b in range(2):
        for h in range(3):
            ps = sorted(int(p) for p in keep[b, h] if p >= 0)
            assert pos[b, h, :len(ps)].tolist() == ps
            torch.testing.assert_close(kd[b, h, :len(ps)], k[b, h, ps])
            torch.testing.assert_close(vd[b, h, :len(ps)], v[b, h, ps])
    # each head owns only its own tokens plus the reserve (aligned): memory is per head, not max * heads
    assert int(c.capacity.sum()) == sum(-(-(n + 4) // 16) * 16 for n in [3, 1, 4, 0, 4, 2])


def test_mask_keep_and_scores():
    k, v = make(b=1, hkv=2, L=10)
    mask = torch.zeros(1, 2, 10, dtype=torch.bool)
    mask[0, 0, [1, 4]] = True
    mask[0, 1, 9] = True
    sc = torch.arange(20, dtype=torch.float32).view(1, 2, 10)
    c = VarlenKVCache.from_dense(k, v, mask, scores=sc)
    assert kept_sets(c) == [[{1, 4}, {9}]]
    assert c.scores()[0, 0, :2].tolist() == [1.0, 4.0] and c.scores()[0, 1, 0] == 19.0


def test_append_grows_and_preserves_content():
    k, v = make(b=2, hkv=2, L=45)
    c = VarlenKVCache.from_dense(k[:, :, :20], v[:, :, :20], reserve=1)
    cap0 = c.capacity.clone()
    for t in range(20, 45):
        c.append(k[:, :, t], v[:, :, t])
    assert (c.capacity > cap0).any()
    kd, vd, pos = c.to_dense()
    torch.testing.assert_close(kd, k)
    torch.testing.assert_close(vd, v)
    assert pos[0, 0].tolist() == list(range(45))
    assert c.seq_lens.tolist() == [45, 45]


def test_remove_slots_moves_the_last_row_into_the_victim():
    k, v = make(b=1, hkv=2, L=8)
    c = VarlenKVCache.from_dense(k, v, track_scores=True)
    c.score[:] = torch.arange(c.score.numel(), dtype=torch.float32)
    c.remove_slots(torch.tensor([[2, -1]]))
    assert c.length.tolist() == [[7, 8]]
    assert kept_sets(c) == [[set(range(8)) - {2}, set(range(8))]]
    kd, _, _ = c.to_dense()
    torch.testing.assert_close(kd[0, 0, :7], k[0, 0, [0, 1, 3, 4, 5, 6, 7]])


def test_compact_is_stable_and_on_device():
    k, v = make(b=2, hkv=2, L=12)
    c = VarlenKVCache.from_dense(k, v)
    keep = torch.rand(2, 2, 12, generator=torch.Generator().manual_seed(1)) > 0.5
    c.compact(keep)
    for b in range(2):
        for h in range(2):
            idx = keep[b, h].nonzero()[:, 0].tolist()
            rows = c.start[b, h] + torch.arange(int(c.length[b, h]))
            assert c.pos[rows].tolist() == idx               # order preserved in storage
            torch.testing.assert_close(c.k[rows], k[b, h, idx])
    before = c.nbytes()
    c.shrink(reserve=1)
    assert c.nbytes() < before
    assert kept_sets(c) == [[set(keep[b, h].nonzero()[:, 0].tolist()) for h in range(2)] for b in range(2)]


def test_rewind_and_attend_reference():
    k, v = make(b=2, hkv=2, L=9)
    q = torch.randn(2, 4, 16)
    c = VarlenKVCache.from_dense(k[:, :, :8], v[:, :, :8])
    c.append(k[:, :, 8], v[:, :, 8])
    out, _ = c.attend(q, backend="reference")
    s = torch.einsum("bkgd,bknd->bkgn", q.view(2, 2, 2, 16).double(), k.double()) / 4
    ref = torch.einsum("bkgn,bknd->bkgd", s.softmax(-1), v.double()).reshape(2, 4, 16)
    assert rel_err(out, ref) <= 1e-6
    c.rewind(1)
    assert c.length.tolist() == [[8, 8], [8, 8]] and c.seq_lens.tolist() == [8, 8]


def test_quantized_store_holds_codes():
    k, v = make(b=1, hkv=2, L=20, d=32)
    c = VarlenKVCache.from_dense(k, v, quant="int4")
    kd, vd, _ = c.to_dense()
    torch.testing.assert_close(kd, dequantize(quantize(k, "int4")))
    c.append(k[:, :, 0], v[:, :, 0])
    kd, _, _ = c.to_dense()
    torch.testing.assert_close(kd[:, :, -1], dequantize(quantize(k[:, :, 0], "int4")))
    assert c.kv_bytes_per_token() == 2 * (16 + 4)


def test_memory_held_against_dense():
    b, hkv, L, d = 2, 4, 2048, 128
    k = torch.randn(b, hkv, L, d, dtype=torch.bfloat16)
    keep = torch.arange(L - L // 10, L).expand(b, hkv, -1)
    dense = dense_cache_bytes(b, hkv, L, d, torch.bfloat16)
    c = VarlenKVCache.from_dense(k, k, keep, reserve=16)
    assert c.nbytes() <= dense / 8
    c4 = VarlenKVCache.from_dense(k, k, keep, reserve=16, quant="int4")
    assert c.nbytes() / c4.nbytes() >= 3.5


def test_bad_input_is_refused():
    k, v = make(b=2, hkv=2, L=10)
    c = VarlenKVCache.from_dense(k, v)
    with pytest.raises(ValueError, match="k: expected shape"):
        c.append(torch.randn(2, 3, 16), torch.randn(2, 3, 16))          # wrong head count
    with pytest.raises(TypeError, match="k: dtype"):
        c.append(torch.randn(2, 2, 16, dtype=torch.float64), torch.randn(2, 2, 16, dtype=torch.float64))
    with pytest.raises(TypeError, match="k: expected a torch.Tensor"):
        c.append(None, v[:, :, 0])
    with pytest.raises(ValueError, match="keep: positions must lie below"):
        VarlenKVCache.from_dense(k, v, torch.tensor([[[9], [1]], [[1], [1]]]), lengths=[5, 10])
    with pytest.raises(ValueError, match="same position twice"):
        VarlenKVCache.from_dense(k, v, torch.tensor([[[1, 1], [0, 2]], [[1, 3], [1, -1]]]))
    with pytest.raises(ValueError, match="lengths"):
        VarlenKVCache.from_dense(k, v, lengths=[0, 4])
    with pytest.raises(ValueError, match="lengths"):
        VarlenKVCache.from_dense(k, v, lengths=[3])
    with pytest.raises(ValueError, match="keep: a mask"):
        VarlenKVCache.from_dense(k, v, torch.ones(2, 2, 9, dtype=torch.bool))
    with pytest.raises(ValueError, match="reserve"):
        VarlenKVCache.from_dense(k, v, reserve=0)
    with pytest.raises(ValueError, match="q: expected shape"):
        c.attend(torch.randn(2, 3, 16))
    with pytest.raises(ValueError, match="n: cannot rewind"):
        c.rewind(11)


def test_ragged_prompt_lengths_keep_no_padding():
    k, v = make(b=2, hkv=2, L=10)
    c = VarlenKVCache.from_dense(k, v, lengths=[4, 10])
    assert c.length.tolist() == [[4, 4], [10, 10]] and c.seq_lens.tolist() == [4, 10]
    c.append(k[:, :, 0], v[:, :, 0])
    _, _, pos = c.to_dense()
    assert pos[0, 0, :5].tolist() == [0, 1, 2, 3, 4] and pos[1, 0, -1] == 10
