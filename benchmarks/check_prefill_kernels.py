"""Correctness of the prefill kernels on a GPU (compiled, not interpreted) against the references.

Small odd shapes (the test suite's cases) in bf16, fp16 and fp32, plus one mid-size case.
Prints one line per case and exits non-zero on any failure. Usage: python benchmarks/check_prefill_kernels.py
"""
from __future__ import annotations

import sys
import time

import torch

from sparsa.ops.block_sparse import block_sparse_attention, block_sparse_attention_ref, normalize_block_indices, num_blocks
from sparsa.ops.vertical_slash import vertical_slash_attention, vertical_slash_attention_ref
from sparsa.ops.vertical_slash.convert import prepare_vertical_slash, vertical_slash_superset_ref
from sparsa.ops.vertical_slash.triton import vertical_slash_attention_triton

TOL = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 1e-2}
BS_CASES = [(2, 4, 4, 200, 200, 64, 32, 64, False), (2, 8, 2, 130, 200, 64, 64, 32, True),
            (1, 8, 1, 200, 200, 64, 32, 32, True), (1, 8, 1, 100, 161, 64, 64, 64, False),
            (1, 2, 1, 70, 150, 128, 64, 64, True), (1, 32, 8, 2900, 3001, 128, 64, 64, True),
            (1, 32, 8, 3001, 3001, 128, 64, 64, False)]
VS_CASES = [(2, 4, 4, 200, 200, 64, False, 12, 16), (2, 8, 2, 130, 200, 64, True, 20, 30),
            (1, 8, 1, 200, 200, 64, False, 6, 40), (1, 2, 1, 70, 150, 128, True, 5, 9),
            (1, 32, 8, 2900, 3001, 128, False, 100, 300)]
failures: list[str] = []


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


def report(name: str, err: float, tol: float, extra: bool = True) -> None:
    ok = err <= tol and extra
    print(f"{'ok  ' if ok else 'FAIL'} {name}: rel err {err:.2e} (tol {tol:g})", flush=True)
    if not ok:
        failures.append(name)


def main() -> None:
    dev = "cuda"
    gen = torch.Generator(device=dev).manual_seed(0)
    t0 = time.time()
    for i, (b, h, hkv, lq, lk, d, bq, bk, shared) in enumerate(BS_CASES):
        dtypes = (torch.bfloat16, torch.float32) if i % 2 == 0 else (torch.bfloat16,)
        if i == 1:
            dtypes = (torch.bfloat16, torch.float16)
        for dt in dtypes:
            q = torch.randn(b, h, lq, d, device=dev, generator=gen).to(dt)
            k = torch.randn(b, hkv, lk, d, device=dev, generator=gen).to(dt)
            v = torch.randn(b, hkv, lk, d, device=dev, generator=gen).to(dt)
            nq, nk = num_blocks(lq, bq), num_blocks(lk, bk)
            raw = torch.randint(-1, nk, (b, hkv if shared else h, nq, max(2, nk // 3)), device=dev, generator=gen)
            raw[:, :, 0] = -1
            idx = normalize_block_indices(raw)
            out, pairs = block_sparse_attention(q, k, v, idx, block_q=bq, block_k=bk, backend="triton")
            ref, rp = block_sparse_attention_ref(q.float(), k.float(), v.float(), idx, block_q=bq, block_k=bk)
            report(f"block_sparse {(b, h, hkv, lq, lk, d, bq, bk, shared)} {dt}", rel(out, ref), TOL[dt],
                   bool(torch.equal(pairs, rp)) and bool(torch.isfinite(out).all()))
    for i, (b, h, hkv, lq, lk, d, shared, nv, ns) in enumerate(VS_CASES):
        for dt in ((torch.bfloat16, torch.float32) if i % 2 == 0 else (torch.bfloat16,)):
            hx = hkv if shared else h
            q = torch.randn(b, h, lq, d, device=dev, generator=gen).to(dt)
            k = torch.randn(b, hkv, lk, d, device=dev, generator=gen).to(dt)
            v = torch.randn(b, hkv, lk, d, device=dev, generator=gen).to(dt)
            vi = torch.randint(-1, lk, (b, hx, nv), device=dev, generator=gen)
            si = torch.randint(-1, lk, (b, hx, ns), device=dev, generator=gen)
            si[..., : ns // 3] = torch.randint(0, 40, (b, hx, ns // 3), device=dev, generator=gen)
            spec = prepare_vertical_slash(vi, si, lq, lk, use_triton=False)
            fast = prepare_vertical_slash(vi, si, lq, lk, use_triton=True)
            same = torch.equal(spec.tile_start, fast.tile_start) and torch.equal(spec.tile_count, fast.tile_count)
            out, pairs = vertical_slash_attention(q, k, v, vi, si, backend="triton")
            ref, rp = vertical_slash_attention_ref(q.float(), k.float(), v.float(), vi, si)
            report(f"vertical_slash {(b, h, hkv, lq, lk, d, shared, nv, ns)} {dt}", rel(out, ref), TOL[dt],
                   same and bool(torch.equal(pairs, rp)) and bool(torch.isfinite(out).all()))
            if i == 1:
                sup = vertical_slash_attention_triton(q, k, v, layout=fast, exact=False)
                sref, _ = vertical_slash_superset_ref(q.float(), k.float(), v.float(), fast)
                report(f"vertical_slash superset {(b, h, hkv, lq, lk)} {dt}", rel(sup, sref), TOL[dt])
    print(f"checked in {time.time() - t0:.1f} s; {len(failures)} failure(s)")
    if failures:
        sys.exit(1)


if __name__ == "__main__":
    main()
