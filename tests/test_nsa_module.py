"""NativeSparseAttention: incremental decoding equals the full forward; wiring; gradients."""
import pytest
import torch

from sparsa.nn import NativeSparseAttention
from sparsa.ops.nsa import NSAConfig, nsa_attention_ref

from ._util import rel_err

SMALL = dict(block=8, stride=4, sel_block=16, n_select=3, window=20, n_forced_init=1, n_forced_local=1)


def _layer(**kw):
    torch.manual_seed(0)
    args = dict(SMALL)
    args.update(kw)
    return NativeSparseAttention(64, 4, 2, 16, **args)


@pytest.mark.parametrize("compress,separate_kv", [("mlp", False), ("mean", False), ("mlp", True)])
def test_incremental_decoding_equals_full_forward(compress, separate_kv):
    layer = _layer(compress=compress, separate_kv=separate_kv).double()
    x = torch.randn(2, 53, 64, dtype=torch.float64)
    with torch.no_grad():
        full = layer(x)
        cache = layer.new_cache(2)
        parts = [layer(x[:, :19], cache=cache)]           # a prompt, then one token at a time
        parts += [layer(x[:, t:t + 1], cache=cache) for t in range(19, 53)]
    assert cache.length == 53 and cache.k_cmp.shape[2] == NSAConfig(**SMALL).n_compressed(53)
    assert rel_err(torch.cat(parts, dim=1), full) < 1e-12


def test_float32_decode_close_to_forward():
    layer = _layer()
    x = torch.randn(1, 40, 64)
    with torch.no_grad():
        full = layer(x)
        cache = layer.new_cache(1)
        steps = torch.cat([layer(x[:, t:t + 1], cache=cache) for t in range(40)], dim=1)
    assert rel_err(steps, full) < 1e-5


def _rope_complex(x, positions, theta=10000.0):
    """Independent RoPE: pairs (i, i + d/2) as complex numbers times exp(i * pos * theta^(-2i/d))."""
    d = x.shape[-1]
    half = d // 2
    freq = theta ** (-torch.arange(half, dtype=torch.float64) * 2 / d)
    rot = torch.polar(torch.ones(len(positions), half, dtype=torch.float64), positions.double()[:, None] * freq)
    z = torch.complex(x[..., :half].double(), x[..., half:].double()) * rot
    return torch.cat([z.real, z.imag], dim=-1)


def test_module_wiring_matches_manual_computation():
    layer = _layer(compress="mean").double()
    cfg = layer.cfg
    bsz, t, h, hkv, d = 2, 37, 4, 2, 16
    x = torch.randn(bsz, t, 64, dtype=torch.float64)
    pos = torch.arange(t)
    q = _rope_complex((x @ layer.q_proj.weight.T).view(bsz, t, h, d).transpose(1, 2), pos)
    k_raw = (x @ layer.k_proj.weight.T).view(bsz, t, hkv, d).transpose(1, 2)
    v = (x @ layer.v_proj.weight.T).view(bsz, t, hkv, d).transpose(1, 2)
    n_cmp = cfg.n_compressed(t)
    k_cmp = torch.stack([k_raw[:, :, i * cfg.stride:i * cfg.stride + cfg.block].mean(2) for i in range(n_cmp)], 2)
    v_cmp = torch.stack([v[:, :, i * cfg.stride:i * cfg.stride + cfg.block].mean(2) for i in range(n_cmp)], 2)
    k_cmp = _rope_complex(k_cmp, torch.arange(n_cmp) * cfg.stride + cfg.block - 1)
    gates = torch.sigmoid(x @ layer.gate_proj.weight.T + layer.gate_proj.bias).view(bsz, t, h, 3).transpose(1, 2)
    o = nsa_attention_ref(q, _rope_complex(k_raw, pos), v, gates, cfg, k_cmp=k_cmp, v_cmp=v_cmp)
    expected = o.transpose(1, 2).reshape(bsz, t, h * d) @ layer.o_proj.weight.T
    with torch.no_grad():
        assert rel_err(layer(x), expected) < 1e-12


def test_gradients_reach_every_parameter():
    layer = _layer(separate_kv=True)
    x = torch.randn(2, 45, 64, requires_grad=True)
    y = layer(x)
    (y * torch.randn_like(y)).sum().backward()
    for name, p in list(layer.named_parameters()) + [("x", x)]:
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_short_input_without_compressed_tokens():
    layer = _layer()
    y = layer(torch.randn(1, 5, 64))
    assert y.shape == (1, 5, 64) and torch.isfinite(y).all()


def test_bad_arguments():
    with pytest.raises(ValueError, match="^kv_heads"):
        NativeSparseAttention(64, 4, 3)
    with pytest.raises(ValueError, match="^compress"):
        NativeSparseAttention(64, 4, compress="max")
    with pytest.raises(ValueError, match="^stride"):
        NativeSparseAttention(64, 4, block=30, stride=16)
    with pytest.raises(ValueError, match="^head_dim"):
        NativeSparseAttention(64, 4, head_dim=15)
    with pytest.raises(ValueError, match="^x"):
        _layer()(torch.randn(1, 5, 32))


def test_autocast_hands_the_attention_one_dtype(monkeypatch):
    """Under autocast q comes out of its projection in bfloat16 while x stays float32: a new cache
    takes the projections' dtype and an existing float32 cache keeps its own, so q, the keys and
    the compressed keys always agree (the Triton kernels refuse mixed dtypes)."""
    import sparsa.nn.nsa as module

    seen = []
    real = module.nsa_attention

    def spy(q, k, v, gates, cfg, **kw):
        seen.append({t.dtype for t in (q, k, v, kw["k_cmp"], kw["v_cmp"])})
        return real(q, k, v, gates, cfg, **kw)

    monkeypatch.setattr(module, "nsa_attention", spy)
    layer = _layer()
    x = torch.randn(1, 40, 64, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
        cache = layer.new_cache(1)
        assert cache.k.dtype == torch.float32
        layer(x, cache=cache)
    assert seen == [{torch.bfloat16}, {torch.float32}]
    out.float().sum().backward()
    assert x.grad is not None and bool(torch.isfinite(x.grad).all())
