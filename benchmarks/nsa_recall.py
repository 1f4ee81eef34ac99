"""Can a natively sparse model learn to retrieve what lies outside its window? A small check on the CPU.

Two tasks on sequences of ``--length`` tokens of random filler:

* ``recall`` (two hops, multi-query associative recall): ``--pairs`` key/value pairs (a key
  token followed by its value token) at random places in the first part; the sequence ends
  with the keys asked again in a new order, each followed by the value to predict;
* ``find`` (one hop): one value token somewhere in the first part; the last token is a
  question token and must predict that value.

Everything to retrieve sits more than NSA's window before its question, so an NSA model has
to reach it through the compressed tokens or the selected blocks; a dense model reads it
directly.

Both models are sparsa's training models (``sparsa.train.model.build_model``: transformers'
Llama with SDPA, or every attention layer replaced by ``sparsa.nn.NativeSparseAttention``),
of the same size, trained on the same batches with the loss on the answer tokens only. The
script prints, every ``--eval-every`` steps, the answer accuracy on held-out sequences, and
writes the curves as JSON (rewritten after each evaluation, so an interruption keeps them).

  python benchmarks/nsa_recall.py OUT.json [--task recall|find] [--steps 2000] [--attention dense ...]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

import torch

from sparsa.train.config import ModelConfig, NSAModelConfig
from sparsa.train.model import build_model, count_parameters

N_KEYS, N_VALUES, N_FILLER = 16, 16, 32
KEY0, VALUE0, FILLER0 = 0, N_KEYS, N_KEYS + N_VALUES
VOCAB = N_KEYS + N_VALUES + N_FILLER


def make_batch(batch: int, length: int, pairs: int, window: int,
               gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens (batch, length), targets (batch, length), -100 except at the answers).

    Pairs are placed in ``[0, length - 2 * pairs - window - 2)`` so that each lies more than
    ``window`` tokens before every question.
    """
    tail = 2 * pairs
    span = length - tail - window - 2
    if span < 2 * pairs:
        raise ValueError(f"length: {length} leaves no room for {pairs} pairs beyond a window of {window}")
    tokens = FILLER0 + torch.randint(0, N_FILLER, (batch, length), generator=gen)
    targets = torch.full((batch, length), -100)
    for b in range(batch):
        keys = torch.randperm(N_KEYS, generator=gen)[:pairs]
        values = torch.randint(0, N_VALUES, (pairs,), generator=gen)
        # non-overlapping slots of two tokens inside the span
        slots = torch.randperm(span // 2, generator=gen)[:pairs] * 2
        tokens[b, slots] = KEY0 + keys
        tokens[b, slots + 1] = VALUE0 + values
        order = torch.randperm(pairs, generator=gen)
        q_pos = length - tail + 2 * torch.arange(pairs)
        tokens[b, q_pos] = KEY0 + keys[order]
        tokens[b, q_pos + 1] = VALUE0 + values[order]
        targets[b, q_pos] = VALUE0 + values[order]      # predicted at the key's position
    return tokens, targets


def make_find_batch(batch: int, length: int, window: int,
                    gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The one-hop task: one value token among filler, more than ``window`` tokens before the
    last position, which holds a key token (the question) and must predict the value.
    Returns (tokens, targets) as :func:`make_batch`."""
    span = length - window - 2
    if span < 1:
        raise ValueError(f"length: {length} leaves no room for a value beyond a window of {window}")
    tokens = FILLER0 + torch.randint(0, N_FILLER, (batch, length), generator=gen)
    targets = torch.full((batch, length), -100)
    where = torch.randint(0, span, (batch,), generator=gen)
    values = VALUE0 + torch.randint(0, N_VALUES, (batch,), generator=gen)
    rows = torch.arange(batch)
    tokens[rows, where] = values
    tokens[:, -1] = KEY0
    targets[:, -1] = values
    return tokens, targets


def batch_for(args: argparse.Namespace, batch: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    if args.task == "find":
        return make_find_batch(batch, args.length, args.window, gen)
    return make_batch(batch, args.length, args.pairs, args.window, gen)


def model_config(attention: str, args: argparse.Namespace) -> ModelConfig:
    nsa = NSAModelConfig(block=args.block, stride=args.stride, sel_block=args.sel_block, n_select=args.n_select,
                         window=args.model_window or args.window, n_forced_init=1, n_forced_local=1, compress="mlp",
                         compress_hidden=32, gate_bias=getattr(args, "gate_bias", None),
                         separate_kv=getattr(args, "separate_kv", False))
    return ModelConfig(hidden_size=args.hidden, num_layers=args.layers, num_heads=4, num_kv_heads=2,
                       head_dim=args.hidden // 4, intermediate_size=2 * args.hidden, rope_theta=10000.0,
                       max_position_embeddings=args.length, attention=attention, nsa=nsa)


@torch.no_grad()
def accuracy(model: torch.nn.Module, tokens: torch.Tensor, targets: torch.Tensor) -> float:
    model.eval()
    logits = model(tokens).logits
    model.train()
    where = targets != -100
    return float((logits.argmax(-1)[where] == targets[where]).float().mean())


@torch.no_grad()
def branch_ablations(model: torch.nn.Module, tokens: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """Held-out accuracy of an NSA model with one branch switched off in every layer (its gate
    forced to 0): which branch carries the retrieval."""
    from sparsa.nn import NativeSparseAttention
    from sparsa.nn.nsa import BRANCHES

    layers = [m for m in model.modules() if isinstance(m, NativeSparseAttention)]
    out = {}
    for i, branch in enumerate(BRANCHES):
        def off(module, args, logits, i=i):
            logits = logits.clone()
            logits[..., i::len(BRANCHES)] = float("-inf")        # gates laid out (head, branch)
            return logits
        hooks = [layer.gate_proj.register_forward_hook(off) for layer in layers]
        try:
            out[f"without_{branch}"] = round(accuracy(model, tokens, targets), 4)
        finally:
            for h in hooks:
                h.remove()
    return out


def train_one(attention: str, args: argparse.Namespace, out: dict, path: Path) -> None:
    torch.manual_seed(args.seed)
    cfg = model_config(attention, args)
    model = build_model(cfg, VOCAB, pad_id=FILLER0, bos_id=FILLER0, eos_id=FILLER0)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 50))
    data_gen = torch.Generator().manual_seed(args.seed)          # the same batches for every attention
    held = batch_for(args, args.eval_batch, torch.Generator().manual_seed(99))
    run = {"attention": attention, "parameters": count_parameters(model)["total"],
           "model": dataclasses.asdict(cfg), "curve": []}
    out["runs"][attention] = run
    t0 = time.perf_counter()
    for step in range(1, args.steps + 1):
        tokens, targets = batch_for(args, args.batch, data_gen)
        logits = model(tokens).logits
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % args.eval_every == 0 or step == args.steps:
            acc = accuracy(model, *held)
            run["curve"].append({"step": step, "loss": round(loss.item(), 4), "accuracy": round(acc, 4),
                                 "seconds": round(time.perf_counter() - t0, 1)})
            print(f"{attention:6s} step {step:5d}  loss {loss.item():.3f}  held-out accuracy {acc:.3f}  "
                  f"{time.perf_counter() - t0:.0f} s", flush=True)
            if attention == "nsa" and step == args.steps:
                run["ablations"] = branch_ablations(model, *held)
                print(f"{attention:6s} held-out accuracy with a branch off: {run['ablations']}", flush=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(out, indent=1))
            os.replace(tmp, path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path, help="JSON file for the curves")
    p.add_argument("--task", choices=("recall", "find"), default="recall",
                   help="recall: multi-query associative recall (two hops); find: one value among filler (one hop)")
    p.add_argument("--attention", action="append", choices=("dense", "nsa"), help="default: both")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--eval-batch", type=int, default=256)
    p.add_argument("--length", type=int, default=128)
    p.add_argument("--pairs", type=int, default=16)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--block", type=int, default=16)
    p.add_argument("--stride", type=int, default=8)
    p.add_argument("--sel-block", type=int, default=16)
    p.add_argument("--n-select", type=int, default=4, help="selected blocks (1 first + 1 most recent forced)")
    p.add_argument("--window", type=int, default=32, help="NSA's window; the data puts every answer beyond it")
    p.add_argument("--model-window", type=int, default=None,
                   help="a different window for the model only (a control: a window covering the whole sequence)")
    p.add_argument("--gate-bias", type=float, nargs=3, metavar=("CMP", "SLC", "WIN"), default=None,
                   help="initial gate logits of the three NSA branches (default: the layer's own init)")
    p.add_argument("--separate-kv", action="store_true", help="NSA: each branch its own key/value projections")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = {"task": args.task, "args": {k: str(v) if isinstance(v, Path) else v
                                                              for k, v in vars(args).items()}, "runs": {}}
    if args.out.exists():
        out = json.loads(args.out.read_text())
    for attention in args.attention or ["dense", "nsa"]:
        train_one(attention, args, out, args.out)


if __name__ == "__main__":
    main()
