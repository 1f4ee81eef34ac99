"""Where a batch-1 decode step of the NSA model and of its dense twin spends its time.

`sparsa bench nsa-train speed` found NSA decoding slower than dense at batch 1 with a dense step
far longer than reading its cache takes, so the step is bound by per-step overhead. This
script profiles a few decode steps of each twin (random weights, after a prompt of CONTEXT
tokens) and reports per step: wall ms, PyTorch operators called, kernels launched, device ms,
and the longest kernels (device-side entries only, as `split_device_time` counts them).

    python benchmarks/nsa_decode_profile.py OUT.json                        # CUDA, 16K
    python benchmarks/nsa_decode_profile.py OUT.json --recipe recipes/sparsa-tiny-nsa-cpu.toml \
        --context 256 --steps 2                                             # CPU check
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.autograd import DeviceType

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))      # the repository's sparsa, uninstalled too

from sparsa.bench.e2e_real import split_device_time
from sparsa.bench.nsa_train import prefilled_decoder, twin_models
from sparsa.train.config import load_recipe


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def profile_decode(model: torch.nn.Module, context: int, steps: int, dev: torch.device) -> dict[str, Any]:
    """Per-step figures of ``steps`` greedy decode steps after a random prompt of ``context`` tokens."""
    # warm-up over the positions that are timed and profiled, so no kernel compiles inside them
    prefilled_decoder(model, context, 1, dev)(2 * steps)
    run = prefilled_decoder(model, context, 1, dev)
    _sync(dev)
    t = time.perf_counter()
    run(steps)
    _sync(dev)
    wall_ms = (time.perf_counter() - t) * 1e3 / steps
    acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with torch.profiler.profile(activities=acts) as prof:
        run(steps)
        _sync(dev)
    events = prof.key_averages()
    cpu_ops = sum(e.count for e in events if e.device_type == DeviceType.CPU and e.key.startswith("aten::"))
    kernels = sum(e.count for e in events if e.device_type != DeviceType.CPU)
    split = split_device_time(events)
    device_ms = split["attention_ms"] + split["gemm_ms"] + split["other_ms"]
    return {"wall_ms": wall_ms, "aten_ops": cpu_ops / steps, "kernels": kernels / steps,
            "device_ms": device_ms / steps, "top": split["top"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--recipe", default="recipes/sparsa-tiny-nsa.toml")
    ap.add_argument("--context", type=int, default=16384)
    ap.add_argument("--steps", type=int, default=8)
    a = ap.parse_args()
    if a.context < 2 or a.steps < 1:
        ap.error("--context must be >= 2 and --steps >= 1")
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg, _ = load_recipe(a.recipe)
    result: dict[str, Any] = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
                              "recipe": a.recipe, "context": a.context, "steps": a.steps, "models": {}}
    for name, model in twin_models(cfg, dev).items():
        r = profile_decode(model, a.context, a.steps, dev)
        result["models"][name] = r
        print(f"{name:6s} {r['wall_ms']:8.2f} ms/step  {r['aten_ops']:7.0f} aten ops  {r['kernels']:6.0f} kernels  "
              f"{r['device_ms']:7.3f} device ms", flush=True)
        for line in r["top"][:5]:
            print("        " + line)
    tmp = a.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    tmp.replace(a.out)


if __name__ == "__main__":
    main()
