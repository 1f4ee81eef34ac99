"""How much kernel work a Vertical-Slash plan leaves on a real model, counted, not timed.

The prefill kernels compute scores tile by tile (query blocks x 64-key tiles), so their speed
follows the score elements they compute, not the pairs the pattern keeps. This script runs one
prompt through a model on the CPU, keeps every layer's queries and keys, plans each method on
them and counts, per layer:

* pair compression: causal pairs of a dense pass / pairs the pattern attends;
* work compression: score elements of a dense causal pass in the same tiles / score elements
  the kernel computes (tiles plus column chunks for Vertical-Slash, blocks for block-sparse).

Work compression bounds the kernel's speed-up over a dense pass that runs at the same
throughput per element; where it sits far below the pair compression, the pattern's pairs are
scattered over tiles that are mostly masked.

  python benchmarks/vs_tile_work.py MODEL.gguf OUT.json [--length 8192] [-c 10 ...] [--only superset ...]
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

import sparsa
from sparsa.eval.models import load_model
from sparsa.methods.block_sparse import BlockSparse
from sparsa.ops.vertical_slash.convert import (computed_tile_elements, dense_tile_elements, prepare_vertical_slash,
                                               superset_pairs, vertical_slash_pairs)


def capture_qk(model, tok, length: int) -> list[tuple[torch.Tensor, torch.Tensor, float]]:
    """(q (1, H, L, D), k (1, Hkv, L, D), scale) of every layer for one needle prompt of ~length tokens."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from sparsa.eval.prompts import split_prompt_ids
    from sparsa.eval.tasks import generate

    context, question = split_prompt_ids(tok, generate("niah_single", length, 0, tok))
    ids = torch.tensor([context + question])
    kept: list[tuple[torch.Tensor, torch.Tensor, float]] = []

    def keep(module, query, key, value, attention_mask, scaling=None, **kw):
        kept.append((query.detach().clone(), key.detach().clone(), float(scaling)))
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, **kw)

    AttentionInterface.register("sparsa_capture", keep)
    model.set_attn_implementation("sparsa_capture")
    with torch.no_grad():
        model(ids, logits_to_keep=1)
    return kept


def vs_counts(m: sparsa.VerticalSlash, q: torch.Tensor, k: torch.Tensor, scale: float) -> dict[str, float]:
    vi, si, _ = m._plan(q, k, scale)
    lq, lk, h = q.shape[2], k.shape[2], q.shape[1]
    layout = prepare_vertical_slash(vi, si, lq, lk, use_triton=False, exact=m.exact, block_q=m.block_q,
                                    check_indices=False)
    pairs = (vertical_slash_pairs(layout, h) if m.exact else superset_pairs(layout, h)).sum()
    dense_pairs = lq * (lq + 1) / 2 * h
    return {"pair_compression": float(dense_pairs / pairs),
            "work_compression": dense_tile_elements(layout, h) / computed_tile_elements(layout, h)}


def bs_counts(m: BlockSparse, q: torch.Tensor, k: torch.Tensor, scale: float) -> dict[str, float]:
    _, stats = m(q, k, q.new_empty(k.shape), scale=scale, backend="reference")
    # block-sparse computes whole blocks: its pairs are its work, up to the causal diagonal blocks
    return {"pair_compression": stats.compression, "work_compression": stats.compression}


KINDS = ("exact", "superset", "block_sparse")   # vertical-slash's two semantics, and block-sparse


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("out", type=Path)
    p.add_argument("--length", type=int, default=8192)
    p.add_argument("-c", "--compression", type=float, action="append", help="default: 5, 10, 20")
    p.add_argument("--only", action="append", choices=KINDS, help="count only these settings (default: all)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tok = load_model(args.model, device="cpu")
    t0 = time.perf_counter()
    layers = capture_qk(model, tok, args.length)
    print(f"captured {len(layers)} layers at {layers[0][0].shape[2]} tokens in {time.perf_counter() - t0:.0f} s")
    settings: dict[str, object] = {}
    kinds = args.only or KINDS
    for c in args.compression or [10.0, 20.0, 5.0]:
        if "exact" in kinds:
            settings[f"vertical_slash c{c:g} exact"] = sparsa.VerticalSlash(compression=c)
        if "superset" in kinds:
            settings[f"vertical_slash c{c:g} superset"] = sparsa.VerticalSlash(compression=c, exact=False)
        if "block_sparse" in kinds:
            settings[f"block_sparse c{c:g}"] = BlockSparse(compression=c)
    rows = []
    for name, m in settings.items():
        per_layer = [(vs_counts if isinstance(m, sparsa.VerticalSlash) else bs_counts)(m, q, k, s)
                     for q, k, s in layers]
        # model-wide: harmonic means (total dense work over total computed work, layers equal in size)
        pc = len(per_layer) / sum(1 / r["pair_compression"] for r in per_layer)
        wc = len(per_layer) / sum(1 / r["work_compression"] for r in per_layer)
        rows.append({"setting": name, "pair_compression": round(pc, 3), "work_compression": round(wc, 3),
                     "per_layer_work_compression": [round(r["work_compression"], 2) for r in per_layer]})
        print(f"{name:32s} pairs {pc:6.2f}x  work {wc:6.2f}x", flush=True)
        # rewritten after every setting, so an interruption keeps what was counted
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(json.dumps({"model": Path(args.model).name, "tokens": layers[0][0].shape[2],
                                   "counted_on": "cpu (counts, not timings)", "rows": rows}, indent=1))
        os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
