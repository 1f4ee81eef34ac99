import pytest
import torch

import sparsa
from sparsa.methods.sliding_window import window_pairs

from ._util import explicit_attention, rel_err


def sw_mask(lq, lk, window, glob):
    m = torch.zeros(lq, lk, dtype=torch.bool)
    for i in range(lq):
        p = lk - lq + i
        for j in range(p + 1):
            m[i, j] = (p - j < window) or j in glob or p in glob
    return m


@pytest.mark.parametrize("lq,lk,window,glob", [(333, 333, 37, ()), (100, 161, 20, (0, 5, 140)), (1, 50, 7, (3,))])
def test_matches_independent_mask(lq, lk, window, glob):
    q, k, v = torch.randn(2, 8, lq, 32), torch.randn(2, 2, lk, 32), torch.randn(2, 2, lk, 32)
    out, st = sparsa.attention(q, k, v, "sliding_window", window=window, global_positions=glob, return_stats=True)
    mask = sw_mask(lq, lk, window, set(glob))
    assert rel_err(out, explicit_attention(q, k, v, mask)) < 1e-5
    assert st.computed == pytest.approx(float(mask.sum()) * 16)


@pytest.mark.parametrize("lq,lk,w", [(10, 10, 3), (7, 30, 5), (30, 30, 40), (5, 9, 1)])
def test_window_pairs_formula(lq, lk, w):
    assert window_pairs(w, lq, lk) == int(sw_mask(lq, lk, w, set()).sum())


def test_bad_window():
    with pytest.raises(ValueError, match="window"):
        sparsa.get_method("sliding_window", window=0)
    with pytest.raises(TypeError, match="global_positions"):
        sparsa.get_method("sliding_window", global_positions=5)
