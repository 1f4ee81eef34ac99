"""Bad arguments to the public entry points: each gives a clear error naming the argument.

Python calls raise ValueError / TypeError / IndexError / FileNotFoundError with the argument's
name in the message; CLI commands print ``error: ...`` naming the option and exit with code 2,
without a traceback.
"""
import pytest
import torch

import sparsa


def qkv(b: int = 1, h: int = 4, hkv: int = 2, n: int = 48, d: int = 16):
    """q (b, h, n, d), k and v (b, hkv, n, d), standard normal."""
    return torch.randn(b, h, n, d), torch.randn(b, hkv, n, d), torch.randn(b, hkv, n, d)


# ---------------------------------------------------------------- sparsa.attention: non-finite inputs

@pytest.mark.parametrize("backend", ["auto", "reference", "sdpa", "triton"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("arg", ["q", "k", "v"])
@pytest.mark.parametrize("method", sparsa.list_methods())
def test_non_finite_input_is_rejected_for_every_method(method, arg, value, backend):
    t = dict(zip("qkv", qkv()))
    t[arg][0, 1, 7, 3] = value
    with pytest.raises(ValueError, match=rf"^{arg}: holds .*(NaN|infinite)"):
        sparsa.attention(t["q"], t["k"], t["v"], method=method, compression=2, backend=backend)


def test_non_finite_check_can_be_skipped():
    q, k, v = qkv()
    v[0, 0, 5] = float("nan")
    out = sparsa.attention(q, k, v, method="dense", check_finite=False)
    assert out.isnan().any()  # SDPA semantics: NaN values reach the rows that read them


@pytest.mark.parametrize("arg", ["q", "k", "v"])
def test_meta_tensor_is_rejected(arg):
    t = dict(zip("qkv", qkv()))
    t[arg] = t[arg].to("meta")
    with pytest.raises(ValueError, match=rf"^{arg}: .*meta"):
        sparsa.attention(t["q"], t["k"], t["v"], method="quest", compression=2)
    with pytest.raises(ValueError, match=rf"^{arg}: .*meta"):
        sparsa.attention(t["q"], t["k"], t["v"], method="quest", compression=2, check_finite=False)
