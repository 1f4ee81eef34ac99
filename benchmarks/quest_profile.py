"""Quest decode step on one GPU: a correctness check, then its parts and the whole step.

    python benchmarks/quest_profile.py --out DIR        # default DIR: $OUT

1. Check, small size (bf16, native and int8 page bounds, 10 steps crossing page boundaries):
   the Triton step against the reference ops; exits 1 when an output's relative error > 1e-2.
2. Target: 32 query / 8 KV heads, head_dim 128, 64K context, batch 16, 16-token pages, budget
   4,096, bf16 cache. Times (do_bench median, L2 flushed, CUDA graph replay) of page scoring,
   selection and attention over the selected pages, each under a sweep of its launch settings
   (the best becomes the default for the step), then the whole step (append + scores + select
   + attention) for int8 and native page bounds, and SDPA cuDNN over the full bf16 cache in the
   same run. Selection and attention do not depend on the bounds' storage: they are swept once.
   Writes quest_profile.json into DIR.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from sparsa.bench.decode import copy_bandwidth_gbps, dense_baselines, graph_ms, sweep_launch
from sparsa.bench.timing import device_info, rel_err
from sparsa.methods import init_cache
from sparsa.methods.quest import Quest
from sparsa.ops.sparse_decode import triton as kt
from sparsa.ops.sparse_decode.reference import quest_page_scores_ref

D, PAGE, BOUNDS = 128, 16, ("int8", "native")
# launch sweeps, best first by design: (pages_per_prog, tile_bytes, num_warps, num_stages,
# all_heads) of the scoring (tile_bytes / 256 pages per loop step for int8 bounds at head_dim 128
# with one program per KV head, all_heads=0; tile_bytes / 2048 with one program for all 8 KV
# heads, all_heads=1), num_warps of the selection, (block_n, num_warps, num_stages, split_factor)
# of the attention
SCORE_VARIANTS = [dict(zip(("pages_per_prog", "tile_bytes", "num_warps", "num_stages", "all_heads"), x)) for x in
                  ((32, 32768, 8, 2, 1), (16, 32768, 4, 1, 1), (64, 16384, 4, 1, 0), (128, 32768, 8, 1, 0),
                   (64, 32768, 8, 3, 1), (32, 16384, 4, 2, 1), (32, 8192, 4, 1, 0), (128, 65536, 8, 3, 1),
                   (128, 16384, 4, 2, 0), (8, 16384, 4, 1, 1), (64, 16384, 8, 1, 0), (256, 16384, 4, 3, 0),
                   (256, 32768, 8, 2, 0), (16, 4096, 2, 1, 0))]
SELECT_VARIANTS = [dict(num_warps=w) for w in (16, 8, 32)]
PAGED_VARIANTS = [dict(zip(("block_n", "num_warps", "num_stages", "split_factor"), x)) for x in
                  ((64, 4, 3, 2), (64, 4, 3, 4), (64, 4, 4, 4), (32, 4, 3, 4), (128, 8, 3, 2), (64, 8, 3, 4),
                   (64, 4, 2, 8), (16, 4, 3, 8))]
# seconds of each sweep (it stops after the variant that ends past its share; one always runs)
SWEEP_S = {"quest_scores": 30.0, "quest_select": 10.0, "paged": 25.0, "quest_scores_native": 12.0}


def tensors(b: int, heads: int, hkv: int, length: int, seed: int) -> tuple[torch.Tensor, ...]:
    """k, v (b, hkv, length, D), q (b, heads, D), new key and value (b, hkv, D): bf16 normal."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    shapes = ((b, hkv, length, D), (b, hkv, length, D), (b, heads, D), (b, hkv, D), (b, hkv, D))
    return tuple(torch.randn(*s, generator=g, device="cuda", dtype=torch.bfloat16) for s in shapes)


def decoder(bounds: str, k, v, heads: int, budget: int, backend: str | None = None):
    q0 = torch.empty(k.shape[0], heads, 1, D, dtype=k.dtype, device=k.device)
    return init_cache(Quest(page_size=PAGE, budget=budget, bounds=bounds), q0, k, v, backend=backend)


def check() -> dict:
    k, v, _, _, _ = tensors(2, 32, 8, 3001, seed=1)
    res = {}
    for bounds in BOUNDS:
        tri = decoder(bounds, k, v, 32, 512, "triton")
        ref = copy.deepcopy(tri)
        ref.backend = "reference"
        worst, same = 0.0, []
        for i in range(10):
            _, _, q, kn, vn = tensors(2, 32, 8, 1, seed=10 + i)
            worst = max(worst, rel_err(tri.step(q, kn, vn)[0], ref.step(q, kn, vn)[0]))
            same.append(float((tri.last_page_list == ref.last_page_list).double().mean()))
        c = tri.cache
        args = (q, c.kmin, c.kmax, c.page_table[:, :(max(c.seq_lens_host) - 1) // PAGE + 1], c.seq_lens, PAGE)
        s_t, s_r = kt.quest_page_scores_triton(*args, scale=c.kscale), quest_page_scores_ref(*args, scale=c.kscale)
        fin = torch.isfinite(s_r)
        res[bounds] = {"rel_err": worst, "same_pages": sum(same) / len(same),
                       "score_rel_err": float((s_t - s_r).abs()[fin].max() / s_r[fin].abs().max()),
                       "bounds_equal": float((c.kbounds == ref.cache.kbounds).double().mean())}
        print(f"check {bounds:>6}: " + ", ".join(f"{a} {x:.2e}" for a, x in res[bounds].items()), flush=True)
    return res


def sweep(name: str, variants: list[dict], fn, seconds: float) -> tuple[float, dict]:
    """Time fn under each launch variant of kernel family ``name`` for about ``seconds``; keep
    the best as the default. A variant that fails (compiler limits on some cards) is skipped."""
    return sweep_launch(name, variants, fn, time.time() + seconds, required=True)


def dense_times(q, k, v, kn, vn) -> dict[str, float]:
    """SDPA cuDNN over the full bf16 cache after the append: the query group as rows (the decode
    benchmark's layout), and q as (B, H, 1, D) with ``enable_gqa`` where cuDNN takes it."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    kf, vf = torch.cat([k, kn[:, :, None]], 2), torch.cat([v, vn[:, :, None]], 2)
    base = {n: graph_ms(fn) for n, fn in dense_baselines(q, kf, vf, ("sdpa_cudnn",)).items()}

    def gqa() -> torch.Tensor:
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            return F.scaled_dot_product_attention(q[:, :, None], kf, vf, enable_gqa=True)
    try:
        gqa()
        base["sdpa_cudnn_gqa"] = graph_ms(gqa)
    except Exception as exc:  # noqa: BLE001 - cuDNN may refuse enable_gqa; the grouped layout stays
        print(f"  sdpa_cudnn with enable_gqa: skipped ({type(exc).__name__}: {str(exc)[:80]})", flush=True)
    return base


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--budget-s", type=float, default=sum(SWEEP_S.values()),
                    help="seconds of launch sweeps in all (split over the parts as in SWEEP_S)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("quest_profile needs a CUDA GPU")
    share = args.budget_s / sum(SWEEP_S.values())
    info = device_info()
    print(f"device {info['device']}, torch {info['torch']}, triton {info['triton']}", flush=True)
    res: dict = {**info, "copy_gbps": round(copy_bandwidth_gbps(), 1), "check": check(), "parts": {}}
    b, heads, hkv, ctx, budget = 16, 32, 8, 65536, 4096
    k, v, q, kn, vn = tensors(b, heads, hkv, ctx, seed=0)
    base = res["dense_us"] = {n: t * 1e3 for n, t in dense_times(q, k, v, kn, vn).items()}
    print("dense: " + ", ".join(f"{n} {t:.0f} us" for n, t in base.items()), flush=True)
    swept: dict = {}
    for bounds in BOUNDS:
        dec = decoder(bounds, k, v, heads, budget)
        c = dec.cache
        _, stats = dec.step(q, kn, vn)                                   # compiles; seq = ctx + 1
        # scores cover the candidate pages only (the current page is ctx // PAGE), as in the step
        cur, width = ctx // PAGE, budget // PAGE + 1

        def scores() -> torch.Tensor:
            return kt.quest_page_scores_triton(q, c.kmin, c.kmax, c.page_table, c.seq_lens, PAGE, max_pages=cur,
                                               scale=c.kscale)
        key = "quest_scores" if bounds == "int8" else "quest_scores_native"
        t_sc, var_sc = sweep(key, SCORE_VARIANTS, scores, SWEEP_S[key] * share)
        s = scores()
        if "select" not in swept:
            swept["select"] = sweep("quest_select", SELECT_VARIANTS,
                                    lambda: kt.quest_select_triton(s, c.seq_lens, PAGE, dec.n_select, width),
                                    SWEEP_S["quest_select"] * share)
        t_sel, var_sel = swept["select"]
        plist, nlist = kt.quest_select_triton(s, c.seq_lens, PAGE, dec.n_select, width)
        if "paged" not in swept:
            swept["paged"] = sweep("paged", PAGED_VARIANTS, lambda: kt.paged_decode_triton(
                q, c.k, c.v, c.page_table, c.seq_lens, plist, nlist, page_size=PAGE), SWEEP_S["paged"] * share)
        t_att, var_att = swept["paged"]
        dec.rewind(1)

        def step() -> None:
            dec.step(q, kn, vn)
            dec.rewind(1)
        t_step = graph_ms(step)
        sc_bytes = b * hkv * cur * c.meta_bytes_per_page()
        att_bytes = b * hkv * (budget + ctx + 1 - cur * PAGE) * c.kv_bytes_per_token()
        res["parts"][bounds] = {
            "scores_us": t_sc * 1e3, "scores_gbps": sc_bytes / t_sc / 1e6, "select_us": t_sel * 1e3,
            "attention_us": t_att * 1e3, "attention_gbps": att_bytes / t_att / 1e6, "step_us": t_step * 1e3,
            "speedup": {n: t / (t_step * 1e3) for n, t in base.items()},
            "launch": {key: var_sc, "quest_select": var_sel, "paged": var_att},
            "compression": stats.compression, "bytes_read": stats.bytes_read, "cache_bytes": c.nbytes()}
        torch.cuda.empty_cache()
    print(f"\n{'bounds':<7}{'scores us':>10}{'GB/s':>7}{'select us':>10}{'attn us':>9}{'GB/s':>7}"
          f"{'step us':>9}{'x cuDNN':>9}{'compr':>7}")
    for bounds, p in res["parts"].items():
        print(f"{bounds:<7}{p['scores_us']:>10.1f}{p['scores_gbps']:>7.0f}{p['select_us']:>10.1f}"
              f"{p['attention_us']:>9.1f}{p['attention_gbps']:>7.0f}{p['step_us']:>9.1f}"
              f"{p['speedup']['sdpa_cudnn']:>9.2f}{p['compression']:>7.2f}")
    print(f"cuDNN {base['sdpa_cudnn']:.0f} us (target step <= {base['sdpa_cudnn'] / 6.5:.0f} us); "
          f"copy {res['copy_gbps']:.0f} GB/s; int8 bounds step "
          f"{res['parts']['native']['step_us'] / res['parts']['int8']['step_us']:.2f}x the native one's speed")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "quest_profile.json").write_text(json.dumps(res, indent=1) + "\n")
    print(f"wrote {out / 'quest_profile.json'}")
    bad = [bd for bd, r in res["check"].items() if not r["rel_err"] <= 1e-2]
    if bad:
        print(f"CHECK FAILED for bounds {bad}: rel err above 1e-2", flush=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
