"""The launch sweep of the decode benchmarks, with the GPU timing replaced by a table."""
import time

import pytest

pytest.importorskip("triton")

from sparsa.bench import decode as bd  # noqa: E402
from sparsa.ops.sparse_decode import triton as kt  # noqa: E402


@pytest.fixture
def fake_timing(monkeypatch):
    saved = {k: dict(v) for k, v in kt.LAUNCH.items()}
    times = {16: 3.0, 32: 1.0, 64: 2.0}

    def graph_ms(fn):
        bn = kt.LAUNCH["paged"]["block_n"]
        if bn == 128:
            raise RuntimeError("out of resources")
        return times[bn]

    monkeypatch.setattr(bd, "graph_ms", graph_ms)
    monkeypatch.setattr(bd.torch.cuda, "synchronize", lambda: None)
    yield
    for k, v in saved.items():
        kt.LAUNCH[k].clear()
        kt.LAUNCH[k].update(v)


def test_sweep_keeps_the_fastest_variant(fake_timing):
    variants = [dict(block_n=n) for n in (64, 32, 16)]
    assert bd.sweep_launch("paged", variants, lambda: None, time.time() + 60) == (1.0, dict(block_n=32))
    assert kt.LAUNCH["paged"]["block_n"] == 32


def test_sweep_deadline_and_failures(fake_timing):
    variants = [dict(block_n=n) for n in (128, 64, 32)]
    assert bd.sweep_launch("paged", variants[1:], lambda: None, time.time() - 1) is None
    with pytest.raises(RuntimeError, match="out of resources"):
        bd.sweep_launch("paged", variants, lambda: None, time.time() + 60)
    # required: a failing variant is skipped, one variant runs even past the deadline
    assert bd.sweep_launch("paged", variants, lambda: None, time.time() - 1, required=True) == (2.0, dict(block_n=64))
    with pytest.raises(RuntimeError, match="every paged launch variant failed"):
        bd.sweep_launch("paged", variants[:1], lambda: None, time.time() + 60, required=True)
