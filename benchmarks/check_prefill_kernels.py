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
        dtypes = {0: (torch.bfloat16, torch.float32), 1: (torch.float16,), 4: (torch.float32,)}.get(i, (torch.bfloat16,))
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
        for dt in ((torch.float32,) if i == 2 else (torch.bfloat16,)):
            hx = hkv if shared else h
            q = torch.randn(b, h, lq, d, device=dev, generator=gen).to(dt)
            k = torch.randn(b, hkv, lk, d, device=dev, generator=gen).to(dt)
            v = torch.randn(b, hkv, lk, d, device=dev, generator=gen).to(dt)
            vi = torch.randint(-1, lk, (b, hx, nv), device=dev, generator=gen)
            si = torch.randint(-1, lk, (b, hx, ns), device=dev, generator=gen)
            si[..., : ns // 3] = torch.randint(0, 40, (b, hx, ns // 3), device=dev, generator=gen)
            ref, rp = vertical_slash_attention_ref(q.float(), k.float(), v.float(), vi, si)
            out, pairs = vertical_slash_attention(q, k, v, vi, si, backend="triton")
            report(f"vertical_slash dispatch {(b, h, hkv, lq, lk, d, shared, nv, ns)} {dt}", rel(out, ref), TOL[dt],
                   bool(torch.equal(pairs, rp)) and bool(torch.isfinite(out).all()))
            for bq in (64, 128):
                spec = prepare_vertical_slash(vi, si, lq, lk, use_triton=False, block_q=bq)
                fast = prepare_vertical_slash(vi, si, lq, lk, use_triton=True, block_q=bq)
                same = torch.equal(spec.tiles, fast.tiles) and torch.equal(spec.clean_count, fast.clean_count)
                out = vertical_slash_attention_triton(q, k, v, layout=fast)
                report(f"vertical_slash block_q={bq} {(b, h, hkv, lq, lk, d, shared, nv, ns)} {dt}", rel(out, ref),
                       TOL[dt], same and bool(torch.isfinite(out).all()))
            if i == 1:
                sl = prepare_vertical_slash(vi, si, lq, lk, use_triton=True, block_q=64, exact=False)
                sup = vertical_slash_attention_triton(q, k, v, layout=sl)
                sref, _ = vertical_slash_superset_ref(q.float(), k.float(), v.float(), sl)
                report(f"vertical_slash superset {(b, h, hkv, lq, lk)} {dt}", rel(sup, sref), TOL[dt])
    # a band of recent diagonals (clean tiles) at a mid size
    b, h, hkv, lq, lk, d = 1, 8, 2, 4000, 4100, 128
    q = torch.randn(b, h, lq, d, device=dev, generator=gen).bfloat16()
    k = torch.randn(b, hkv, lk, d, device=dev, generator=gen).bfloat16()
    v = torch.randn(b, hkv, lk, d, device=dev, generator=gen).bfloat16()
    si = torch.cat([torch.arange(0, 900, device=dev), torch.randint(0, lk, (50,), device=dev, generator=gen)])
    si = si.expand(b, h, -1).contiguous()
    vi = torch.randint(0, lk, (b, h, 60), device=dev, generator=gen)
    ref, _ = vertical_slash_attention_ref(q.float(), k.float(), v.float(), vi, si)
    for bq in (64, 128):
        lay = prepare_vertical_slash(vi, si, lq, lk, use_triton=True, block_q=bq)
        out = vertical_slash_attention_triton(q, k, v, layout=lay)
        report(f"vertical_slash band block_q={bq} (clean tiles: {int(lay.clean_count.sum())} of "
               f"{int(lay.tile_count.sum())})", rel(out, ref), 1e-2)
    print(f"checked in {time.time() - t0:.1f} s; {len(failures)} failure(s)")
    if failures:
        sys.exit(1)


if __name__ == "__main__":
    main()
