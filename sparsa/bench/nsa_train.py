"""Natively sparse vs dense, trained side by side: whole-model speed and the comparison table.

``speed``: for a recipe's model with dense attention and with NSA (random weights: speed does
not depend on them), one training step (forward + backward, bf16 autocast, batch 1) at each
``--train-context``, and decoding tokens/s after a prompt of each ``--decode-context``; dense
and NSA in the same run on the same card.

``summarize``: the dense and NSA training directories (``log.jsonl``, ``card_eval.jsonl``),
the speed JSON -> the comparison JSON at ``--out`` (required; the published one is
``benchmarks/results/nsa_training.json``) and a plot of the loss curves.

    sparsa bench nsa-train speed --recipe recipes/sparsa-tiny-nsa.toml --out speed.json
    sparsa bench nsa-train summarize --dense RUN_D --nsa RUN_N --speed speed.json \\
        --out benchmarks/results/nsa_training.json --plot benchmarks/results/nsa_training_loss.png
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from .._validation import check_device, check_out_file
from ..train.config import TrainConfig, load_recipe
from ..train.model import build_model, count_parameters
from .timing import device_info, once_ms

VOCAB = 8192  # the default tokenizer's size (speed only; no tokenizer is loaded)


def _median_s(fn: Callable[[], Any], reps: int) -> float:
    """Median seconds of ``reps`` calls after one untimed call (whose time is printed: it holds
    the kernels' compilation)."""
    print(f"  first call {once_ms(fn) / 1e3:.1f} s", flush=True)
    return sorted(once_ms(fn) for _ in range(reps))[reps // 2] / 1e3


def twin_models(cfg: TrainConfig, dev: torch.device) -> dict[str, torch.nn.Module]:
    """The recipe's model with dense attention and with NSA, both freshly initialised (fp32)."""
    out = {}
    for attention in ("dense", "nsa"):
        m = dataclasses.replace(cfg.model, attention=attention)
        torch.manual_seed(cfg.seed)
        out[attention] = build_model(m, VOCAB, 0, 1, 2).to(dev)
    return out


def step_seconds(model: torch.nn.Module, length: int, dev: torch.device, reps: int,
                 sdpa_backend: SDPBackend | None = None) -> float:
    """Seconds of one training step's forward + backward (no optimizer) on (1, length) tokens.

    sdpa_backend: pin the model's SDPA calls to this backend (default: PyTorch's choice).
    """
    ids = torch.randint(3, VOCAB, (1, length + 1), device=dev)
    use_bf16 = dev.type == "cuda"
    model.train()

    def step() -> None:
        pin = sdpa_kernel([sdpa_backend]) if sdpa_backend is not None else contextlib.nullcontext()
        with pin, torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_bf16):
            logits = model(input_ids=ids[:, :-1], use_cache=False).logits
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), ids[:, 1:].flatten())
        loss.backward()
        model.zero_grad(set_to_none=True)

    return _median_s(step, reps)


@torch.no_grad()
def prefilled_decoder(model: torch.nn.Module, length: int, batch: int, dev: torch.device) -> Callable[[int], None]:
    """Prefill a random prompt of (batch, length) tokens; returns ``run(n)``, which makes n greedy
    decode steps on that cache."""
    from transformers import DynamicCache  # local: loads transformers

    from ..integrations.hf import compat

    model.eval()
    ids = torch.randint(3, VOCAB, (batch, length), device=dev)
    kw = {compat.cache_kwarg_name(model): DynamicCache(), "use_cache": True}
    with torch.no_grad():
        tok = model(input_ids=ids, logits_to_keep=1, **kw).logits[:, -1].argmax(-1, keepdim=True)

    @torch.no_grad()
    def run(n: int) -> None:
        nonlocal tok
        for _ in range(n):
            tok = model(input_ids=tok, **kw).logits[:, -1].argmax(-1, keepdim=True)

    return run


def decode_tokens_per_s(model: torch.nn.Module, length: int, batch: int, steps: int, dev: torch.device) -> float:
    """Greedy decode steps per second x batch after a prompt of ``length`` tokens (prefill not timed)."""
    # warm-up over the very positions that are timed: a kernel variant compiled for one of them
    # (a launch shape that changes at some length) is then not timed
    prefilled_decoder(model, length, batch, dev)(steps)
    run = prefilled_decoder(model, length, batch, dev)
    return batch * steps / (once_ms(lambda: run(steps)) / 1e3)


def run_speed(recipe: str | Path, out: str | Path, *, train_contexts: Sequence[int], decode_contexts: Sequence[int],
              decode_batch: int, decode_steps: int, reps: int, device: str | None = None) -> dict[str, Any]:
    """Time both twins; write and return ``{"device": ..., "rows": [...]}``."""
    cfg, _ = load_recipe(recipe)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    models = twin_models(cfg, dev)
    rows: list[dict[str, Any]] = []
    result = {**device_info(), "recipe": str(recipe),
              "parameters": {a: count_parameters(m)["total"] for a, m in models.items()}, "rows": rows}

    def save() -> None:
        p = Path(out)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=1) + "\n")
        os.replace(tmp, p)

    for L in train_contexts:
        t = {}
        for a, m in models.items():
            print(f"train step {L} {a}", flush=True)
            t[a] = step_seconds(m, L, dev, reps)
        row = {"pass": "train_step", "context": L, "dense_ms": 1e3 * t["dense"], "nsa_ms": 1e3 * t["nsa"],
               "dense_baseline": "sdpa_default"}
        if dev.type == "cuda":
            # the dense baseline is the faster of PyTorch's own SDPA choice and SDPA pinned to cuDNN
            print(f"train step {L} dense, SDPA pinned to cuDNN", flush=True)
            try:
                cudnn = step_seconds(models["dense"], L, dev, reps, SDPBackend.CUDNN_ATTENTION)
            except RuntimeError as e:  # no cuDNN attention for this shape or build
                print(f"  cuDNN attention unavailable: {e}", flush=True)
                cudnn = None
            row["dense_cudnn_ms"] = None if cudnn is None else 1e3 * cudnn
            if cudnn is not None and cudnn < t["dense"]:
                t["dense"] = cudnn
                row.update(dense_ms=1e3 * cudnn, dense_baseline="sdpa_cudnn")
        row.update(speedup=t["dense"] / t["nsa"], dense_tokens_per_s=L / t["dense"], nsa_tokens_per_s=L / t["nsa"])
        rows.append(row)
        print(f"train step {L:>6}: dense {1e3 * t['dense']:8.1f} ms ({row['dense_baseline']})  "
              f"nsa {1e3 * t['nsa']:8.1f} ms  {t['dense'] / t['nsa']:.2f}x", flush=True)
        save()
    for model in models.values():
        model.to(torch.bfloat16 if dev.type == "cuda" else torch.float32)
    for L in decode_contexts:
        r = {a: decode_tokens_per_s(m, L, decode_batch, decode_steps, dev) for a, m in models.items()}
        rows.append({"pass": "decode", "context": L, "batch": decode_batch, "dense_tokens_per_s": r["dense"],
                     "nsa_tokens_per_s": r["nsa"], "speedup": r["nsa"] / r["dense"]})
        print(f"decode {L:>6} x{decode_batch}: dense {r['dense']:8.1f} tok/s  nsa {r['nsa']:8.1f} tok/s  "
              f"{r['nsa'] / r['dense']:.2f}x", flush=True)
        save()
    return result


# --------------------------------------------------------------------------------------- summary

def read_log(run_dir: str | Path) -> list[dict[str, Any]]:
    """The step rows of a training log (``log.jsonl``), in order."""
    path = Path(run_dir) / "log.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"dense/nsa: no training log {path}")
    return [r for r in map(json.loads, path.read_text().splitlines()) if "loss" in r]


def card_scores(run_dir: str | Path) -> dict[str, dict[int, float]]:
    """Mean score per task and length of a run's card evaluation (``card_eval.jsonl``)."""
    path = Path(run_dir) / "card_eval.jsonl"
    acc: dict[tuple[str, int], list[float]] = defaultdict(list)
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn last line
            acc[(r["task"], int(r["length"]))].append(float(r["score"]))
    out: dict[str, dict[int, float]] = defaultdict(dict)
    for (task, L), v in sorted(acc.items()):
        out[task][L] = sum(v) / len(v)
    return dict(out)


def _mean_over_tasks(scores: dict[str, dict[int, float]], length: int) -> float | None:
    vals = [s[length] for s in scores.values() if length in s]
    return sum(vals) / len(vals) if vals else None


def summarize(dense_dir: str | Path, nsa_dir: str | Path, speed: str | Path | None, out: str | Path,
              plot: str | Path | None = None) -> dict[str, Any]:
    """Build the comparison (losses, scores per task and length, speeds); write JSON (and the plot)."""
    runs = {"dense": Path(dense_dir), "nsa": Path(nsa_dir)}
    logs = {a: read_log(d) for a, d in runs.items()}
    scores = {a: card_scores(d) for a, d in runs.items()}
    lengths = sorted({L for s in scores.values() for t in s.values() for L in t})
    result: dict[str, Any] = {"runs": {}, "speed": None}
    for a, log in logs.items():
        last = log[-10:]
        ck_path = runs[a] / "checkpoint.pt"
        trained_on, params = None, None
        if ck_path.exists():
            ck = torch.load(ck_path, map_location="cpu", weights_only=False)
            trained_on = ck.get("devices")
            params = sum(t.numel() for k, t in ck["model"].items() if k != "lm_head.weight")
        result["runs"][a] = {
            "dir": runs[a].name, "devices": trained_on, "parameters": params, "steps": log[-1]["step"] if log else 0, "tokens": log[-1]["tokens"] if log else 0,
            "final_loss": sum(r["loss"] for r in last) / len(last) if last else None,
            "final_lm_loss": (sum(r["lm_loss"] for r in last if "lm_loss" in r) /
                              max(1, sum("lm_loss" in r for r in last))) if last else None,
            "train_tokens_per_s": (sum(r["tokens_per_s"] for r in last) / len(last)) if last else None,
            "loss_curve": [[r["tokens"], r["loss"]] for r in log],
            "scores": {t: {str(L): v for L, v in s.items()} for t, s in scores[a].items()},
            "average": {str(L): _mean_over_tasks(scores[a], L) for L in lengths},
        }
    if speed is not None and Path(speed).exists():
        result["speed"] = json.loads(Path(speed).read_text())
        result["device"] = result["speed"].get("device")
    p = Path(out)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(result, indent=1) + "\n")
    if plot is not None:
        plot_losses(result, plot)
    return result


def plot_losses(result: dict[str, Any], path: str | Path) -> None:
    """Training loss against tokens seen, dense and NSA."""
    import matplotlib  # local: only the plot needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for a, run in result["runs"].items():
        xs = [t / 1e6 for t, _ in run["loss_curve"]]
        ys = [v for _, v in run["loss_curve"]]
        ax.plot(xs, ys, label="NSA" if a == "nsa" else "dense", lw=1.4)
    ax.set_xlabel("training tokens (M)")
    ax.set_ylabel("loss (answer tokens weighted)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    runs = result["runs"]
    dev = result.get("device") or ", ".join(runs["nsa"].get("devices") or [])
    ax.set_title(f"{runs['nsa']['dir']} vs {runs['dense']['dir']}" + (f" ({dev})" if dev else ""), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _fmt_len(L: int) -> str:
    return f"{L // 1024}K" if L >= 1024 and L % 1024 == 0 else str(L)


def table(result: dict[str, Any]) -> str:
    """A markdown table in the style of the NSA paper's (scores per length, speed)."""
    runs = result["runs"]
    lengths = sorted({int(L) for r in runs.values() for L in r["average"]})
    head = ["model", "tokens", "final loss", *(f"avg score {_fmt_len(L)}" for L in lengths), "train tok/s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for a, r in runs.items():
        avg = [r["average"].get(str(L)) for L in lengths]
        tps = r.get("train_tokens_per_s")
        loss = r.get("final_loss")
        cells = [a, f"{r['tokens'] / 1e6:.3g}M", "" if loss is None else f"{loss:.3f}",
                 *("" if v is None else f"{v:.2f}" for v in avg), "" if tps is None else f"{tps:,.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _check_out_file(parser: argparse.ArgumentParser, option: str, path: str | Path) -> None:
    """``parser.error`` unless file ``path`` can be written (:func:`check_out_file`); its directory
    is created here, as the write would."""
    try:
        p = check_out_file(option, path)
    except ValueError as e:
        parser.error(str(e))
    p.absolute().parent.mkdir(parents=True, exist_ok=True)


def _check_speed_args(sp: argparse.ArgumentParser, a: argparse.Namespace) -> None:
    """Every ``speed`` option checked before any model is built or timed."""
    for name in ("decode_batch", "decode_steps", "reps"):
        if getattr(a, name) < 1:
            sp.error(f"--{name.replace('_', '-')}: must be >= 1")
    for name in ("train_context", "decode_context"):
        bad = [L for L in getattr(a, name) or [] if L < 1]
        if bad:
            sp.error(f"--{name.replace('_', '-')}: must be >= 1 tokens, got {bad[0]}")
    if a.device is not None:
        try:
            check_device("--device", a.device)
        except ValueError as e:
            sp.error(str(e))
    try:
        load_recipe(a.recipe)
    except (OSError, ValueError, TypeError) as e:
        msg = str(e)  # the loader's own messages start "recipe: ..." or "base: ..."
        sp.error(f"--{msg}" if msg.startswith("recipe:") else f"--recipe: {a.recipe}: {msg}")
    _check_out_file(sp, "--out", a.out)


def _check_summarize_args(sm: argparse.ArgumentParser, a: argparse.Namespace) -> None:
    """Every ``summarize`` option checked before anything is read in full or written."""
    for option, d in (("--dense", a.dense), ("--nsa", a.nsa)):
        p = Path(d)
        if not p.is_dir():
            sm.error(f"{option}: no such directory {p} (expected a training run's directory, with log.jsonl)")
        if not (p / "log.jsonl").is_file():
            sm.error(f"{option}: no training log {p / 'log.jsonl'} (expected a training run's directory)")
    if Path(a.dense).resolve() == Path(a.nsa).resolve():
        sm.error(f"--nsa: {a.nsa} is the same directory as --dense; give the NSA run's directory")
    if a.speed is not None:
        p = Path(a.speed)
        if not p.is_file():
            sm.error(f"--speed: no such file {p}")
        try:
            data = json.loads(p.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            sm.error(f"--speed: {p} is not a JSON file ({e})")
        if not (isinstance(data, dict) and isinstance(data.get("rows"), list)
                and all(isinstance(r, dict) for r in data["rows"])):
            sm.error(f"--speed: {p} is not the output of `sparsa bench nsa-train speed` (no list of rows)")
    _check_out_file(sm, "--out", a.out)
    if a.plot is not None:
        import importlib.util

        if importlib.util.find_spec("matplotlib") is None:
            sm.error("--plot: needs matplotlib (pip install matplotlib)")
        _check_out_file(sm, "--plot", a.plot)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="sparsa bench nsa-train", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sp = sub.add_parser("speed", help="training-step and decode speed, dense vs NSA, same run")
    sp.add_argument("--recipe", default="recipes/sparsa-tiny-nsa.toml")
    sp.add_argument("--out", required=True)
    sp.add_argument("--train-context", type=int, action="append", help="repeatable (default 8192, 32768)")
    sp.add_argument("--decode-context", type=int, action="append", help="repeatable (default 16384, 65536)")
    sp.add_argument("--decode-batch", type=int, default=1)
    sp.add_argument("--decode-steps", type=int, default=64)
    sp.add_argument("--reps", type=int, default=5)
    sp.add_argument("--device", default=None)
    sm = sub.add_parser("summarize", help="the comparison JSON, table and loss plot")
    sm.add_argument("--dense", required=True)
    sm.add_argument("--nsa", required=True)
    sm.add_argument("--speed", default=None)
    sm.add_argument("--out", required=True, help="the comparison JSON (e.g. benchmarks/results/nsa_training.json)")
    sm.add_argument("--plot", default=None)
    a = ap.parse_args(argv)
    if a.cmd == "speed":
        _check_speed_args(sp, a)
        run_speed(a.recipe, a.out, train_contexts=a.train_context or [8192, 32768],
                  decode_contexts=a.decode_context or [16384, 65536], decode_batch=a.decode_batch,
                  decode_steps=a.decode_steps, reps=a.reps, device=a.device)
    else:
        _check_summarize_args(sm, a)
        res = summarize(a.dense, a.nsa, a.speed, a.out, a.plot)
        print(table(res))
        if res.get("speed"):
            for r in res["speed"]["rows"]:
                print(json.dumps({k: (round(v, 2) if isinstance(v, float) and math.isfinite(v) else v)
                                  for k, v in r.items()}))
