"""KV quantization: error bound, layout, memory per token, bad input."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsa.ops.kv_quant import QuantSpec, dequantize, error_bound, quantize

SPECS = ["int8", "int4", "int8:g16", "int4:g8", "int4:g16"]


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(SPECS), st.integers(1, 5), st.floats(1e-3, 1e3), st.integers(0, 2**31 - 1))
def test_every_element_within_half_a_step(spec, rows, magnitude, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, 32, generator=gen) * magnitude
    x[0, :4] = magnitude * 7                # an outlier channel block
    qt = quantize(x, spec)
    err = (x - dequantize(qt)).abs()
    assert bool((err <= error_bound(qt)).all())


@pytest.mark.parametrize("spec", SPECS)
def test_constant_and_zero_groups_are_exact(spec):
    x = torch.zeros(3, 32)
    x[1] = 2.5
    x[2, :16] = -1.0
    qt = quantize(x, spec)
    assert torch.isfinite(qt.scale.float()).all()
    torch.testing.assert_close(dequantize(qt), x, atol=1e-3, rtol=1e-3)


def test_int4_packing_layout():
    """byte j holds channel j (low nibble) and channel j + D/2 (high nibble)."""
    x = torch.arange(8, dtype=torch.float32)[None].repeat(2, 1)          # codes 0..7 with min 0, scale 7/15
    x[1] = torch.tensor([15.0, 0, 0, 0, 0, 0, 0, 15.0])
    qt = quantize(x, "int4")
    assert qt.data.dtype == torch.uint8 and qt.data.shape == (2, 4)
    lo, hi = qt.data & 15, qt.data >> 4
    assert lo[1].tolist() == [15, 0, 0, 0] and hi[1].tolist() == [0, 0, 0, 15]


def test_error_on_random_normal_data():
    """Stated errors (relative, per tensor) on random normal vectors of 128 channels."""
    x = torch.randn(512, 128, generator=torch.Generator().manual_seed(0))

    def err(spec):
        return float((dequantize(quantize(x, spec)) - x).norm() / x.norm())

    assert err("int8") <= 0.01
    assert err("int4") <= 0.12
    assert err("int4:g32") <= err("int4")


def test_bytes_per_token_and_memory_ratio():
    assert QuantSpec(8).bytes_per_token(128) == 130
    assert QuantSpec(4).bytes_per_token(128) == 68
    assert QuantSpec(4, 32).bytes_per_token(128) == 80
    bf16 = 2 * 128
    assert bf16 / QuantSpec(4).bytes_per_token(128) >= 3.5
    qt = quantize(torch.randn(10, 128), "int4")
    assert qt.nbytes() == 10 * 68


@pytest.mark.parametrize("spec,match", [("int3", "quant"), ("int4:gx", "group"), (7, "quant")])
def test_bad_spec(spec, match):
    with pytest.raises((ValueError, TypeError), match=match):
        QuantSpec.parse(spec)


def test_bad_inputs_name_the_argument():
    with pytest.raises(ValueError, match="group_size"):
        quantize(torch.randn(2, 32), "int8:g12")
    with pytest.raises(ValueError, match="group_size"):
        quantize(torch.randn(2, 32), QuantSpec(4, 24))
    with pytest.raises(ValueError, match="head_dim"):
        quantize(torch.randn(2, 7), "int4:g7")
    with pytest.raises(TypeError, match="x"):
        quantize(torch.ones(2, 8, dtype=torch.int32), "int8")
    with pytest.raises(ValueError, match="x"):
        quantize(torch.tensor([[1e6, 0.0]]), "int8")
    with pytest.raises(ValueError, match="x"):
        quantize(torch.tensor([[float("nan"), 0.0]]), "int8")
    with pytest.raises(ValueError, match="bits"):
        QuantSpec(2)
