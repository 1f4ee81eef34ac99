"""benchmarks/vs_tile_work.py: the counts on random inputs."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

import sparsa

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("vs_tile_work", ROOT / "benchmarks" / "vs_tile_work.py")
vt = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(vt)


@pytest.fixture(scope="module")
def qk():
    g = torch.Generator().manual_seed(0)
    return torch.randn(1, 4, 512, 32, generator=g), torch.randn(1, 2, 512, 32, generator=g)


def test_exact_pair_compression_is_the_methods_own(qk):
    q, k = qk
    m = sparsa.VerticalSlash(compression=5, init_tokens=4, local_diagonals=8)
    counts = vt.vs_counts(m, q, k, 32 ** -0.5)
    _, stats = m(q, k, torch.zeros_like(k), scale=32 ** -0.5, backend="reference")
    assert counts["pair_compression"] == pytest.approx(stats.compression, rel=1e-9)
    # the kernel computes every kept pair at least once, so its work compression is at most the pair
    # compression times (dense tile elements / dense causal pairs): 36 tiles of 64 x 64 over 512 * 513 / 2
    assert 0.0 < counts["work_compression"] <= counts["pair_compression"] * (36 * 64 * 64) / (512 * 513 / 2)


def test_every_line_costs_a_dense_pass_of_tiles(qk):
    q, k = qk
    counts = vt.vs_counts(sparsa.VerticalSlash(compression=1), q, k, 32 ** -0.5)
    assert counts["pair_compression"] == pytest.approx(1.0)
    assert counts["work_compression"] <= 1.0


def test_block_sparse_work_is_its_pairs(qk):
    q, k = qk
    counts = vt.bs_counts(sparsa.BlockSparse(compression=4), q, k, 32 ** -0.5)
    assert counts["pair_compression"] == counts["work_compression"] > 1.0
