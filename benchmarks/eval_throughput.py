"""Evaluation throughput of one model at one length: samples per second for dense and sparse
cells, batched as `sparsa eval` batches them.

Per (method, batch size) it renders the samples (timed apart: `sparsa eval` renders each sample
once per task and length), runs greedy decoding batch by batch with CUDA synchronised around
each batch, and reports samples/s of generation, the exact-match score, and for dense both
prefill paths (one masked forward, the default, and rows one by one).

    python benchmarks/eval_throughput.py MODEL OUT.json [--length 8192] [--samples 64] \
        [--batch 16 --batch 64] [--method dense --method vertical_slash:10 ...]
    python benchmarks/eval_throughput.py sparsa-tiny OUT.json --length 256 --samples 4 --smoke
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))      # the repository's sparsa, uninstalled too

from sparsa.eval.greedy import Prompt, greedy_generate
from sparsa.eval.models import load_model
from sparsa.eval.prompts import split_prompt_ids
from sparsa.eval.run import instance_seed
from sparsa.eval.sweep import Cell, _apply, _exact, answer_line_done
from sparsa.eval.tasks import get_task
from sparsa.eval.tokenization import TokenCounter, special_ids
from sparsa.methods.registry import method_class


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def run(model_name: str, out: Path, length: int, samples: int, batches: list[int], methods: list[str],
        task: str) -> list[dict]:
    model, tok = load_model(model_name)
    counter = TokenCounter(tok)
    ids = special_ids(tok)
    eos, pad = ids["eos"], ids["pad"] if ids["pad"] is not None else (ids["eos"] or 0)
    t0 = time.perf_counter()
    insts = [get_task(task).generate(length, instance_seed(0, s), tok, split="eval") for s in range(samples)]
    prompts = [Prompt(*split_prompt_ids(tok, x)) for x in insts]
    render_s = (time.perf_counter() - t0) / samples
    lens = [len(p.ids) for p in prompts]
    print(f"{task} at {length}: {samples} samples of {min(lens)}-{max(lens)} tokens, rendered in "
          f"{render_s * 1e3:.1f} ms each", flush=True)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    rows = []
    variants = []
    for m in methods:
        if m == "dense":
            variants += [("dense", None, True), ("dense", None, False)]
        else:
            name, _, c = m.partition(":")
            variants.append((name, float(c) if c else None, False))
    for name, target, row_prefill in variants:
        phase = "dense" if name == "dense" else ("decode" if method_class(name).phase == "decode" else "prefill")
        handle = _apply(model, Cell(task, length, name, phase, target, "aware"), {})

        def generate(lo: int, hi: int) -> list[list[int]]:
            return greedy_generate(model, prompts[lo:hi], max_new_tokens=max(x.max_new_tokens for x in insts[lo:hi]),
                                   handle=handle, decode_phase=phase == "decode", eos_id=eos, pad_id=pad,
                                   row_prefill=row_prefill, stop=lambda g: answer_line_done(counter.decode(g))).ids

        try:
            for bs in batches:
                generate(0, bs)  # one warm-up batch (kernel selection, autotuning), then the timed pass
                _sync()
                exact, total_s = 0, 0.0
                for i in range(0, samples, bs):
                    t = time.perf_counter()
                    out_ids = generate(i, i + bs)
                    _sync()
                    total_s += time.perf_counter() - t
                    exact += sum(int(_exact(x, counter.decode(g))) for x, g in zip(insts[i:i + bs], out_ids))
                label = name if target is None else f"{name}:{target:g}"
                if name == "dense":
                    label += " (rows)" if row_prefill else " (masked)"
                row = {"method": label, "batch": bs, "length": length, "task": task, "samples": samples,
                       "samples_per_s": samples / total_s, "with_rendering_per_s": samples / (total_s + render_s * samples),
                       "exact": exact / samples, "device": device}
                rows.append(row)
                print(f"{label:28s} batch {bs:3d}: {row['samples_per_s']:7.2f} samples/s "
                      f"({row['with_rendering_per_s']:.2f} with rendering), exact {row['exact']:.2f}", flush=True)
                tmp = out.with_suffix(".tmp")
                tmp.write_text(json.dumps({"device": device, "rows": rows}, indent=1) + "\n")
                tmp.replace(out)
        finally:
            if handle is not None:
                handle.remove()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("out", type=Path)
    ap.add_argument("--length", type=int, default=8192)
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--batch", type=int, action="append")
    ap.add_argument("--method", action="append")
    ap.add_argument("--task", default="niah_single")
    ap.add_argument("--smoke", action="store_true", help="a quick CPU check")
    a = ap.parse_args()
    batches = a.batch or ([2] if a.smoke else [16, 64])
    methods = a.method or (["dense", "streaming:5"] if a.smoke else
                           ["dense", "vertical_slash:10", "block_sparse:10", "streaming:10", "snapkv:10", "quest:10"])
    run(a.model, a.out, a.length, a.samples, batches, methods, a.task)


if __name__ == "__main__":
    main()
