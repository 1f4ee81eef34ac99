"""Registers, spills and shared memory of the NSA kernels, compiled for sm_90 without a GPU.

Compiles every NSA kernel with its launch shape (``LAUNCH`` of ``sparsa.ops.nsa.triton_fwd``,
the ``DEC_*`` shapes of ``triton_decode``) at the paper shape (16 query heads per KV head,
head_dim 128, bf16) and prints ptxas's resource use per thread: a nonzero STACK means register
spills. Spills are a hint, not a verdict: on H100/H200 several spilling shapes (selection at
4 warps, band dK/dV with 32 rows) timed faster than the spill-free ones, so the defaults come
from `sparsa bench nsa --sweep`. Needs only ``triton`` (its
bundled ptxas and cuobjdump); use the Triton version of the GPU machine, since register
allocation changes between versions.

    python benchmarks/nsa_resources.py [--kernel band_dkdv] [--warps 8 --stages 2 --rows 32 --keys 64]
"""
from __future__ import annotations

import argparse
import inspect
import os
import re
import subprocess
import tempfile

import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from sparsa.ops.nsa import triton_bwd as tb
from sparsa.ops.nsa import triton_decode as td
from sparsa.ops.nsa import triton_fwd as tf

G, D, NS = 16, 128, 16
# pointer arguments by name; every other lower-case argument is an i32, the scales fp32
_F32 = {"LSE", "DELTA", "DK", "DV", "DQ", "TBUF", "MSUB", "WE", "MPART", "LPART", "APART", "M1", "L1", "A1"}
_I32 = {"IDX", "COUNT", "SEG_BH", "SEG_J", "SEG_ST", "SEG_EN", "SEG_ONE", "TLIST"}
_I64 = {"KEYS", "CAND"}


def _signature(fn, consts: dict) -> tuple[dict, dict]:
    sig, cx = {}, {}
    for i, name in enumerate(inspect.signature(fn).parameters):
        if name in consts:
            sig[name], cx[(i,)] = "constexpr", consts[name]
        elif name[0].isupper():
            sig[name] = "*fp32" if name in _F32 else "*i32" if name in _I32 else "*i64" if name in _I64 else "*bf16"
        else:
            sig[name] = "fp32" if name.endswith("scale") else "i32"
    return sig, cx


def resources(kernel, consts: dict, num_warps: int, num_stages: int) -> dict[str, int]:
    """{'regs', 'stack', 'smem'} of ``kernel`` compiled for sm_90 with these constexprs."""
    sig, cx = _signature(kernel.fn, consts)
    k = triton.compile(ASTSource(fn=kernel, signature=sig, constexprs=cx), target=GPUTarget("cuda", 90, 32),
                       options={"num_warps": num_warps, "num_stages": num_stages})
    tool = os.path.join(os.path.dirname(inspect.getfile(GPUTarget)), "..", "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(k.asm["cubin"])
        f.flush()
        report = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True, check=True).stdout
    m = re.search(r"REG:(\d+) STACK:(\d+)", report)
    return {"regs": int(m.group(1)), "stack": int(m.group(2)), "smem": k.metadata.shared}


def kernels(over: dict) -> dict[str, tuple]:
    """name -> (kernel, constexprs, num_warps, num_stages) with the current launch shapes;
    ``over`` (rows, warps, stages, keys) replaces a LAUNCH entry's fields."""
    def launch(key):
        rows, warps, stages, *keys = tf.LAUNCH[key]
        return (over.get("rows", rows), over.get("warps", warps), over.get("stages", stages),
                over.get("keys", keys[0] if keys else 64))

    common = dict(G=G, D=D, DT=tl.bfloat16, PREC="tf32")
    out = {}
    rows, w, s, _ = launch("cmp")
    gp, bq = tf.tile_rows(G, rows)
    bs, bc = tf.select_tile(4)
    out["cmp"] = (tf._cmp_topk_fwd_kernel, dict(common, GP=gp, BQ=bq, BC=bc, STRIDE=16, CBLOCK=32, SEL=64, R=4, C=2,
                  BS=bs, NS=NS, NSP=NS, NSW=NS, N_INIT=1, N_LOCAL=2, SPLIT=True, TOPK=True,
                  KEYS_OUT=not tf.TOPK_IN_KERNEL), w, s)
    rows, w, s, _ = launch("win")
    gp, bq = tf.tile_rows(G, rows)
    out["win"] = (tf._window_fwd_kernel, dict(common, GP=gp, BQ=bq, BN=64), w, s)
    for key, kern, extra in (("slc", tf._selection_fwd_kernel, dict(HAS_WIN=True)),
                             ("slc_dq", tb._selection_dq_kernel, dict(ACCUM=True))):
        rows, w, s, _ = launch(key)
        gp, bq = tf.selection_tile(G, NS, rows)
        out[key] = (kern, dict(common, GP=gp, BQ=bq, M=max(16, gp * bq), SB=64, NSW=NS, NSWP=NS, **extra), w, s)
    for key, kern, extra in (("band_dq", tb._band_dq_kernel, {}),
                             ("band_dkdv", tb._band_dkdv_kernel, dict(SPLIT=True))):
        rows, w, s, bn = launch(key)
        gp, bq = tf.tile_rows(G, rows)
        out[key] = (kern, dict(common, MODE=0, BRANCH=0, ACCUM=True, GP=gp, BQ=bq, BN=bn, STRIDE=16, CBLOCK=32,
                               **extra), w, s)
    rows, w, s, _ = launch("slc_dkdv")
    gp, bq = tf.tile_rows(G, rows)
    out["slc_dkdv"] = (tb._selection_dkdv_kernel, dict(common, GP=gp, BQ=bq, SB=64), w, s)
    sub, wch, w = td.DEC_CMP_LAUNCH
    out["dec_cmp"] = (td._dec_cmp_kernel, dict(common, MP=G, R=4, NGS=sub // 4, NSUB=td.DEC_MAX_NSUB, E=2,
                                                  WCH=wch, WT=wch), w, 3)
    out["dec_topk"] = (td._dec_topk_kernel, dict(G=G, MP=G, NCP=8, BSD=128, NS=NS, NSP=NS, NGS=sub // 4, E=2, SEL=64,
                                                 N_INIT=1, N_LOCAL=2), td.DEC_TOPK_WARPS, 3)
    out["dec_sparse"] = (td._dec_sparse_kernel, dict(common, MP=G, SB=64, NS=NS, NSP=NS, NSW=NS, NCP2=8, BPS=2),
                         td.DEC_SPARSE_WARPS, 3)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kernel", nargs="*", help="kernels to compile (default: all)")
    for name in ("rows", "warps", "stages", "keys"):
        ap.add_argument(f"--{name}", type=int, help=f"override the launch shape's {name}")
    args = ap.parse_args(argv)
    over = {k: v for k in ("rows", "warps", "stages", "keys") if (v := getattr(args, k)) is not None}
    print(f"triton {triton.__version__}, sm_90, {G} heads per KV head, head_dim {D}, bf16")
    for name, (kern, consts, warps, stages) in kernels(over).items():
        if args.kernel and name not in args.kernel:
            continue
        r = resources(kern, consts, warps, stages)
        flag = "  SPILLS" if r["stack"] else ""
        print(f"{name:11s} warps {warps} stages {stages}: {r['regs']:3d} regs, stack {r['stack']:4d} B, "
              f"shared {r['smem'] // 1024} KiB{flag}")


if __name__ == "__main__":
    main()
