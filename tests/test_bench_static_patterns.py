"""Pieces of the static-pattern prefill benchmark that run on the CPU: the FlexAttention block
tables of each pattern, and the windowed reference check."""
import pytest
import torch

from sparsa.bench.prefill import (CHECK_ROWS, flex_bigbird_tables, flex_local_tables, longformer_globals,
                                  pinned_method, reference_windows, static_method, worst_error)
from sparsa.methods.bigbird import BigBird
from sparsa.ops.block_sparse import LocalMask, block_mask_from_indices, num_blocks

from ._util import rel_err


def local_dense(length, window, sink, glob):
    pos = torch.arange(length)
    diff = pos[:, None] - pos[None, :]
    g = torch.zeros(length, dtype=torch.bool)
    g[list(glob)] = True
    return (diff >= 0) & ((diff < window) | (pos[None, :] < sink) | g[None, :] | g[:, None])


def check_tables(kept, full, partial, block):
    """Every kept pair lies in a listed block; full blocks hold only kept pairs, and whole blocks."""
    length = kept.shape[-1]
    n = num_blocks(length, block)
    pad = n * block - length
    padded = torch.nn.functional.pad(kept, (0, pad, 0, pad)).view(*kept.shape[:-2], n, block, n, block)
    rows_ok = torch.nn.functional.pad(torch.ones(length, dtype=torch.bool), (0, pad)).view(n, block)
    needed = padded.any(-1).any(-2)
    all_kept = (padded | ~rows_ok[:, :, None, None]).all(-1).all(-2)
    complete = (torch.arange(n) + 1) * block <= length
    assert not bool((full & partial).any())
    assert bool(((full | partial) >= needed).all())
    assert bool((all_kept & complete[None, :] >= full).all())


@pytest.mark.parametrize("length,window,sink,glob,block", [
    (256, 30, 4, (), 32), (200, 17, 0, (0, 1, 100, 150), 16), (256, 50, 3, (255,), 64), (97, 10, 40, (), 16),
])
def test_flex_local_tables(length, window, sink, glob, block):
    local = LocalMask.build(window, sink, glob, length)
    full, partial = flex_local_tables(local, length, block)
    check_tables(local_dense(length, window, sink, glob), full[0, 0], partial[0, 0], block)
    if window >= 2 * block:
        assert int(full.sum()) > 0          # blocks inside every row's window skip the mask


@pytest.mark.parametrize("length,bs,block", [(256, 16, 32), (200, 16, 64), (333, 32, 32)])
def test_flex_bigbird_tables(length, bs, block):
    q = torch.randn(1, 4, length, 8)
    m = BigBird(block_size=bs, seed=4)
    idx = m.plan(q, q[:, :2])
    full, partial, fine = flex_bigbird_tables(idx, length, bs, block)
    assert torch.equal(fine, block_mask_from_indices(idx, num_blocks(length, bs)))
    pos = torch.arange(length)
    causal = pos[None, :] <= pos[:, None]
    kept = fine[0][:, pos // bs][:, :, pos // bs] & causal
    for h in range(4):
        check_tables(kept[h], full[0, h], partial[0, h], block)


@pytest.mark.filterwarnings("ignore:flex_attention called without")
def test_flex_masks_match_the_reference_in_eager_mode():
    flex = pytest.importorskip("torch.nn.attention.flex_attention")
    from sparsa.bench.prefill import flex_bigbird_mask, flex_causal_mask, flex_local_mask
    from sparsa.ops.block_sparse import local_attention_ref
    g = torch.Generator().manual_seed(0)
    length = 256
    q, k, v = torch.randn(1, 8, length, 32, generator=g), torch.randn(1, 2, length, 32, generator=g), \
        torch.randn(1, 2, length, 32, generator=g)
    local = LocalMask.build(20, 2, (100, 200), length)
    out = flex.flex_attention(q, k, v, block_mask=flex_local_mask(local, length, "cpu", block=32), enable_gqa=True)
    ref, _ = local_attention_ref(q, k, v, window=20, sink=2, global_positions=(100, 200))
    assert rel_err(out, ref) <= 1e-4
    m = BigBird(block_size=16, seed=1)
    ref, _ = m(q, k, v, backend="reference")
    out = flex.flex_attention(q, k, v, block_mask=flex_bigbird_mask(m.plan(q, k), length, 16, block=32),
                              enable_gqa=True)
    assert rel_err(out, ref) <= 1e-4
    # dense causal from block tables; a length that is not a multiple of the block
    n = 250
    out = flex.flex_attention(q[:, :, :n], k[:, :, :n], v[:, :, :n], block_mask=flex_causal_mask(n, "cpu", block=32),
                              enable_gqa=True)
    ref = torch.nn.functional.scaled_dot_product_attention(q[:, :, :n], k[:, :, :n].repeat_interleave(4, 1),
                                                           v[:, :, :n].repeat_interleave(4, 1), is_causal=True)
    assert rel_err(out, ref) <= 1e-4


@pytest.mark.parametrize("name", ["sliding_window", "streaming", "bigbird"])
def test_pinned_method_reproduces_rows(name):
    length = 1024
    g = torch.Generator().manual_seed(1)
    q, k, v = torch.randn(1, 4, length, 16, generator=g), torch.randn(1, 1, length, 16, generator=g), \
        torch.randn(1, 1, length, 16, generator=g)
    m = static_method(name, length, 5.0)
    out, stats = m(q, k, v, backend="reference")
    refs = reference_windows(q, k, v, pinned_method(m, stats))
    assert [e - s for s, e, _ in refs] == [CHECK_ROWS, CHECK_ROWS]
    assert worst_error(out, refs) <= 1e-6
    assert abs(stats.compression / 5.0 - 1) <= 0.25


def test_longformer_globals():
    glob = longformer_globals(131072)
    assert glob[:4] == (0, 1, 2, 3) and len(glob) == 8
    assert all(0 <= p < 131072 for p in glob)
    assert all(0 <= p < 512 for p in longformer_globals(512))
