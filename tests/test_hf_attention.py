"""The attention function's pieces against independent references (no model needed)."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

import sparsa  # noqa: E402
from sparsa.integrations.hf import attention as hf_attention  # noqa: E402
from sparsa.integrations.hf import compat  # noqa: E402
from sparsa.integrations.hf.attention import dense_attention, merge_stats  # noqa: E402

from ._util import causal_mask  # noqa: E402


def _reference(q, k, v, allow, scale, softcap=None):
    """float64 attention under a full bool mask; rows that see nothing -> 0."""
    g = q.shape[1] // k.shape[1]
    s = q.double() @ k.double().repeat_interleave(g, 1).transpose(-1, -2) * scale
    if softcap is not None:
        s = torch.tanh(s / softcap) * softcap
    p = torch.softmax(s.masked_fill(~allow, float("-inf")), -1).nan_to_num(0.0)
    return p @ v.double().repeat_interleave(g, 1)


@pytest.mark.parametrize("lq", [1, 9, 37])
@pytest.mark.parametrize("window", [None, 5])
@pytest.mark.parametrize("softcap", [None, 3.0])
def test_dense_attention_matches_reference(lq: int, window: int | None, softcap: float | None,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hf_attention, "_MASK_CHUNK_ELEMENTS", 4 * 4 * 8 * 37)   # several row chunks
    monkeypatch.setattr(hf_attention, "_ROW_CHUNK_ELEMENTS", 4 * 4 * 8 * 37)
    monkeypatch.setattr(hf_attention, "_ROW_CHUNK", 8)
    g = torch.Generator().manual_seed(0)
    b, h, hkv, lk, d = 3, 4, 2, 37, 16
    q = torch.randn(b, h, lq, d, generator=g)
    k = torch.randn(b, hkv, lk, d, generator=g)
    v = torch.randn(b, hkv, lk, d, generator=g)
    padding = torch.ones(b, lk, dtype=torch.bool)
    padding[1, :6] = False                       # left padding
    padding[2, -3:] = False                      # right padding (its last queries are padding)
    full = causal_mask(lq, lk)[None, None]
    if window is not None:
        rows = torch.arange(lk - lq, lk)[:, None]
        full = full & (torch.arange(lk)[None, :] > rows - window)[None, None]
    allow = full & padding[:, None, None, :]
    out = dense_attention(q, k, v, 0.3, padding=padding, window=window, softcap=softcap)
    torch.testing.assert_close(out.double(), _reference(q, k, v, allow, 0.3, softcap), atol=1e-5, rtol=0)
    # without padding, and with a caller-built 4-D mask
    out = dense_attention(q, k, v, 0.3, window=window, softcap=softcap)
    torch.testing.assert_close(out.double(), _reference(q, k, v, full, 0.3, softcap), atol=1e-5, rtol=0)
    out = dense_attention(q, k, v, 0.3, mask4d=allow, softcap=softcap)
    torch.testing.assert_close(out.double(), _reference(q, k, v, allow, 0.3, softcap), atol=1e-5, rtol=0)


def test_padding_mask_reading() -> None:
    lq, lk = 4, 10
    assert compat.padding_mask(None, lq, lk) is None
    assert compat.padding_mask(torch.ones(2, lk), lq, lk) is None
    pad = torch.ones(2, lk, dtype=torch.bool)
    pad[0, :3] = False
    assert torch.equal(compat.padding_mask(pad.long(), lq, lk), pad)
    # the registered mask function slices the window a layer sees
    got = compat.padding_mask_function(batch_size=2, q_length=lq, kv_length=6, kv_offset=2, attention_mask=pad)
    assert torch.equal(got, pad[:, 2:8])
    assert compat.padding_mask_function(batch_size=2, q_length=lq, kv_length=4, kv_offset=6,
                                        attention_mask=pad) is None
    # 4-D masks: causal over real tokens is read back (bool and additive forms) ...
    allow = causal_mask(lq, lk)[None, None] & pad[:, None, None, :]
    assert torch.equal(compat.padding_mask(allow, lq, lk), pad)
    additive = torch.zeros(allow.shape).masked_fill(~allow, torch.finfo(torch.float32).min)
    assert torch.equal(compat.padding_mask(additive, lq, lk), pad)
    # ... anything else is refused
    with pytest.raises(ValueError, match="attention_mask"):
        compat.padding_mask(torch.ones(2, 1, lq, lk, dtype=torch.bool), lq, lk)
    with pytest.raises(ValueError, match="attention_mask"):
        compat.padding_mask(torch.ones(2, lk, 1), lq, lk)


def test_merge_stats_weights_rows() -> None:
    q = torch.randn(1, 2, 30, 8)
    k = torch.randn(1, 1, 30, 8)
    m = sparsa.get_method("sliding_window", window=5)
    _, a = m(q, k, k)
    _, b = m(q[:, :, -10:], k[:, :, -10:], k[:, :, -10:])
    merged = merge_stats([a, b], "sliding_window", "prefill")
    assert merged.dense == a.dense + b.dense and merged.computed == a.computed + b.computed
    torch.testing.assert_close(merged.per_head, torch.full((2,), merged.compression, dtype=torch.float64))
    assert merge_stats([], "x", "prefill") is None


def test_row_positions_slice_contiguous_rows_and_index_holes() -> None:
    padding = torch.tensor([[False, False, True, True, True, True],     # left padded
                            [True, True, True, True, False, False],     # right padded: no real query
                            [True, False, True, True, False, True],     # holes
                            [False] * 6])                               # empty
    rows = hf_attention._row_positions(padding, 2, 6, torch.device("cpu"))
    assert rows[0] == (slice(0, 2), slice(2, 6))
    assert rows[1] is None and rows[3] is None
    wq, wk = rows[2]
    assert wq == slice(1, 2) and wk.tolist() == [0, 2, 3, 5]


def test_per_row_takes_each_rows_real_tokens() -> None:
    torch.manual_seed(0)
    q, k = torch.randn(3, 2, 4, 8), torch.randn(3, 1, 6, 8)
    padding = torch.tensor([[False, False, True, True, True, True],
                            [True, False, True, True, False, True],
                            [True, True, False, False, False, False]])
    rows = hf_attention._per_row(q, k, k, padding, lambda qb, kb, vb: (qb, kb))
    for b, got in enumerate(rows):
        real_q = padding[b, 2:]
        if not real_q.any():
            assert got is None
            continue
        torch.testing.assert_close(got[0], q[b:b + 1][:, :, real_q], rtol=0, atol=0)
        torch.testing.assert_close(got[1], k[b:b + 1][:, :, padding[b]], rtol=0, atol=0)
