"""The read-floor kernel reads every element once (a skipped tile would make the floor too low)."""
import os

import pytest

os.environ["TRITON_INTERPRET"] = "1"          # before any triton-dependent import
pytest.importorskip("triton", reason="triton is not installed")

import torch  # noqa: E402

from sparsa.bench.stream_read import _stream_sum_kernel, stream_read_ms  # noqa: E402


@pytest.mark.parametrize("n,progs,per,block", [(1000, 3, 384, 128), (4096, 4, 1024, 256), (130, 1, 256, 128)])
def test_stream_sum_reads_every_element_once(n, progs, per, block):
    x = torch.arange(n, dtype=torch.float32).remainder(7).to(torch.bfloat16)
    out = torch.zeros(progs * block)
    _stream_sum_kernel[(progs,)](x, out, n, per, BLOCK=block)
    assert out.sum().item() == pytest.approx(x.float().sum().item())
    # each program summed its own slice
    for p in range(progs):
        assert out[p * block:(p + 1) * block].sum().item() == pytest.approx(x[p * per:(p + 1) * per].float().sum().item())


def test_stream_read_ms_rejects_a_byte_count_below_one_element():
    with pytest.raises(ValueError, match="n_bytes"):
        stream_read_ms(1)
