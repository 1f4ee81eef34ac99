"""Training loop: AdamW + cosine schedule, bf16 autocast on CUDA, atomic checkpoints, resume.

Runs on one device, or data-parallel on several when started by ``torchrun`` (one process
per GPU): each process trains on its share of every step's sequences, the gradients are
summed over processes and normalised by the step's total loss weight, so a step computes the
same update as on one device (up to the order of float additions). Process 0 logs,
evaluates and checkpoints.

Layout of an output directory::

    OUT/checkpoint.pt     last checkpoint (model, optimizer, step, RNG states, recipe)
    OUT/log.jsonl         one JSON object per logged step (and per quick evaluation)
    OUT/recipe.toml|json  the recipe the run was started with
    OUT/model/            the exported HuggingFace directory (after the last step)
    OUT/card_eval.jsonl   the model card's evaluation rows (resumable)
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import time
import warnings
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .._validation import check_device, check_duration, check_int, check_writable_dir
from ..eval.api import evaluate, get_task, list_tasks, summarize
from .config import TrainConfig, with_defaults
from .data import (StreamDataset, lm_tokens, load_train_tokenizer, make_loader, rank_micro_batches, special_token_ids,
                   step_layout)
from .model import build_model, count_parameters, train_flops_per_token

CHECKPOINT = "checkpoint.pt"
LOG = "log.jsonl"


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Learning rate of 0-based ``step``: linear warm-up, then cosine to min_lr_ratio * lr."""
    o = cfg.optim
    if step < o.warmup_steps:
        return o.lr * (step + 1) / o.warmup_steps
    t = (step - o.warmup_steps) / max(1, cfg.steps - o.warmup_steps)
    return o.lr * (o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def make_optimizer(cfg: TrainConfig, model: torch.nn.Module, device: torch.device) -> torch.optim.Optimizer:
    """AdamW; weight decay on matrices only (not on norms)."""
    seen, decay, no_decay = set(), [], []
    for _, p in model.named_parameters():
        if id(p) in seen or not p.requires_grad:
            continue
        seen.add(id(p))
        (decay if p.ndim >= 2 else no_decay).append(p)
    o = cfg.optim
    groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    kw = {"fused": True} if device.type == "cuda" else {}
    return torch.optim.AdamW(groups, lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps, **kw)


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _rng_state() -> dict[str, Any]:
    st = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st: dict[str, Any]) -> None:
    # the checkpoint is loaded onto the training device; RNG states must be CPU byte tensors
    torch.set_rng_state(st["torch"].cpu())
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in st["cuda"]])


# may change between a run and its resume (they do not change the trained weights)
_RESUME_FREE = ("eval", "card", "log_every", "ckpt_every", "compile", "data.num_workers")


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = prefix + k
        if isinstance(v, dict) and k not in ("task_weights", "task_params"):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _recipe_diff(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    fa, fb = _flatten(a), _flatten(b)
    free = lambda k: any(k == f or k.startswith(f + ".") for f in _RESUME_FREE)  # noqa: E731
    return [k for k in sorted(set(fa) | set(fb)) if not free(k) and fa.get(k) != fb.get(k)]


@dataclass
class TrainResult:
    out_dir: Path
    step: int
    finished: bool
    stopped_by: str | None
    model: Any
    tokenizer: Any


class _Stopper:
    """Turns SIGTERM / SIGINT into a request to checkpoint and stop after the current step."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _Stopper:
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.reason is not None:  # second signal: give up at once
            raise KeyboardInterrupt
        self.reason = signal.Signals(signum).name

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _sha(tok) -> str:
    return hashlib.sha256(tok.to_str().encode()).hexdigest()


def _device(spec: str | None) -> torch.device:
    if spec is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return check_device("device", spec)


def dist_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) as torchrun sets them; (0, 1, 0) in a plain process."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def device_label(dev: torch.device, world: int = 1) -> str:
    """What trains: the device's name, with the process count when there are several."""
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else dev.type
    return name if world == 1 else f"{world} x {name}"


def _setup_dist(dev: torch.device, world: int, local: int) -> torch.device:
    """Join the default process group (NCCL on CUDA, gloo on the CPU) unless already in one;
    each process takes its local GPU. The group stays for the caller (``run`` evaluates with it)."""
    if dev.type == "cuda":
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    if dist.get_world_size() != world:
        raise RuntimeError(f"WORLD_SIZE is {world} but the process group has {dist.get_world_size()} processes")
    return dev


def _all_reduce_grads(model: torch.nn.Module) -> None:
    """Sum every gradient over the processes (one flat buffer, one collective)."""
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat)
    i = 0
    for p in params:
        p.grad.copy_(flat[i:i + p.numel()].view_as(p))
        i += p.numel()


def _truncate_log(path: Path, step: int) -> None:
    """Drop log rows after ``step`` (written after the checkpoint a run resumes from)."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                keep.append(line)
        except json.JSONDecodeError:
            continue
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(x + "\n" for x in keep))
    os.replace(tmp, path)


def train(cfg: TrainConfig, out_dir: str | Path, *, recipe_text: str | None = None, recipe_suffix: str = ".toml",
          resume: bool = False, max_steps: int | None = None, time_limit_s: float | None = None,
          device: str | None = None, progress: bool = True) -> TrainResult:
    """Train (or continue training) the recipe's model in ``out_dir``.

    resume: continue from ``out_dir/checkpoint.pt`` if present (else start fresh). Without it,
        an existing checkpoint is an error.
    max_steps: stop (with a checkpoint) after this many steps in this call (0: only build and
        checkpoint the model).
    time_limit_s: stop (with a checkpoint) once a step ends after this many seconds.
    Stops the same way on SIGTERM / SIGINT. Returns where it stopped.
    """
    cfg.validate()
    if max_steps is not None:
        check_int("max_steps", max_steps, minimum=0)
    if time_limit_s is not None:
        check_duration("time_limit_s", time_limit_s)
    dev = _device(device)
    out = check_writable_dir("out", out_dir)
    ckpt_path, log_path = out / CHECKPOINT, out / LOG
    rank, world, local = dist_env()
    if world > 1:
        dev = _setup_dist(dev, world, local)
    main = rank == 0
    use_bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and dev.type == "cuda")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    tok = load_train_tokenizer(cfg.data.tokenizer)
    pad, bos, eos = special_token_ids(tok)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, tok.get_vocab_size(), pad, bos, eos).to(dev)
    opt = make_optimizer(cfg, model, dev)
    step, elapsed_prev, tokens_seen, devices = 0, 0.0, 0, []

    if ckpt_path.exists():
        if not resume:
            raise FileExistsError(f"out: {out} already holds a checkpoint; pass --resume to continue it "
                                  "or choose another directory")
        ck = torch.load(ckpt_path, map_location=dev, weights_only=False)
        was = ck["recipe"].get("model", {}).get("attention", "dense")
        if was != cfg.model.attention:
            raise ValueError(f"model.attention: the checkpoint in {out} was trained with {was} attention and "
                             f"the recipe asks for {cfg.model.attention}; a run cannot change its attention "
                             "(start a new --out)")
        try:
            old = with_defaults(ck["recipe"])
        except (TypeError, ValueError):
            old = ck["recipe"]
        diff = _recipe_diff(old, cfg.to_dict())
        if diff:
            raise ValueError(f"recipe: differs from the checkpoint's in {', '.join(diff)}; a resumed run must "
                             "use the recipe it started with")
        if ck.get("tokenizer_sha256") not in (None, _sha(tok)):
            raise ValueError(f"data.tokenizer: {cfg.data.tokenizer} is not the tokenizer the checkpoint was trained "
                             "with (its content changed)")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        step, elapsed_prev, tokens_seen = ck["step"], ck["elapsed_s"], ck["tokens"]
        devices = list(ck.get("devices", []))
        _set_rng_state(ck["rng"])
        if main:
            _truncate_log(log_path, step)
    else:
        if resume and main:
            warnings.warn(f"resume: no checkpoint in {out} yet; training starts at step 0", stacklevel=2)
        if log_path.exists() and main:
            log_path.unlink()  # a run that never reached its first checkpoint starts over
    if main and recipe_text is not None and not (out / f"recipe{recipe_suffix}").exists():
        (out / f"recipe{recipe_suffix}").write_text(recipe_text)

    here = device_label(dev, world)
    if not devices or devices[-1] != here:
        devices.append(here)  # in the checkpoint only once a step has run here
    n_params = count_parameters(model)
    fwd_model = torch.compile(model) if cfg.compile and dev.type == "cuda" else model
    if world > 1 and not main:
        dist.barrier()  # process 0 tokenizes the corpus into the cache first
    lm = lm_tokens(tok, cfg.data.lm_max_files, cache_dir=out / "cache")
    if world > 1 and main:
        dist.barrier()
    dataset = StreamDataset(cfg, tok, lm)
    stop_at = cfg.steps if max_steps is None else min(cfg.steps, step + max_steps)
    t_start = time.perf_counter()
    stopped_by = None

    from tqdm.auto import tqdm

    bar = tqdm(total=cfg.steps, initial=step, desc=cfg.name, disable=not (progress and main), unit="step",
               dynamic_ncols=True, mininterval=2.0)
    window: dict[str, list[float]] = defaultdict(list)
    per_task: dict[int, list[float]] = defaultdict(lambda: [0.0, 0.0])  # task -> [sequences right, sequences]
    t_window = time.perf_counter()
    tokens_window = 0
    log_f = open(log_path, "a") if main else open(os.devnull, "w")
    task_names = list_tasks()  # a training sequence's task_id indexes this list (LM_TASK_ID: none)
    model.train()
    try:
        with _Stopper() as stopper:
            if step == 0 and stop_at > 0:
                log_f.write(json.dumps({"step": 0, "event": "start", "parameters": n_params,
                                        "device": str(dev), "bf16": use_bf16}) + "\n")
            loader = iter(make_loader(cfg, dataset, step, stop_at, rank, world)) if step < stop_at else iter(())
            while step < stop_at:
                L, n_seq, _ = step_layout(cfg.data, step, cfg.steps)
                micro = [next(loader) for _ in rank_micro_batches(cfg.data, step, cfg.steps, rank, world)]
                total_w = sum(float(b["weights"].sum()) for b in micro)
                if world > 1:
                    total_w = _all_reduce_floats([total_w], dev)[0]
                lr = lr_at(cfg, step)
                for g in opt.param_groups:
                    g["lr"] = lr
                opt.zero_grad(set_to_none=True)
                sums: dict[str, float] = defaultdict(float)  # step statistics; per task "right{t}", "seqs{t}"
                for b in micro:
                    ids = b["ids"].to(dev, non_blocking=True)
                    w = b["weights"].to(dev, non_blocking=True)
                    a = b["answer"].to(dev, non_blocking=True)
                    inp, tgt = ids[:, :-1], ids[:, 1:]
                    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_bf16):
                        logits = fwd_model(input_ids=inp, use_cache=False).logits
                    ce = F.cross_entropy(logits.float().flatten(0, 1), tgt.flatten(), reduction="none").view_as(w)
                    loss = (ce * w).sum() / total_w
                    loss.backward()
                    with torch.no_grad():
                        lm_mask = (w > 0) & ~a
                        sums["loss"] += float((ce * w).sum())
                        sums["lm_ce"] += float((ce * lm_mask).sum())
                        sums["lm_n"] += float(lm_mask.sum())
                        if a.any():
                            hit = logits.argmax(-1) == tgt
                            seq_ok = (hit | ~a).all(-1)
                            has = a.any(-1)
                            sums["ans_ce"] += float((ce * a).sum())
                            sums["ans_n"] += float(a.sum())
                            sums["ans_right"] += float((hit & a).sum())
                            for tid, ok in zip(b["task_id"][has.cpu()].tolist(), seq_ok[has].tolist()):
                                sums[f"right{tid}"] += float(ok)
                                sums[f"seqs{tid}"] += 1.0
                if world > 1:
                    _all_reduce_grads(model)
                    sums = _reduce_stats(sums, len(task_names), dev)
                for tid in range(len(task_names)):
                    if sums.get(f"seqs{tid}"):
                        per_task[tid][0] += sums[f"right{tid}"]
                        per_task[tid][1] += sums[f"seqs{tid}"]
                gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
                opt.step()
                step += 1
                tokens_seen += n_seq * L
                tokens_window += n_seq * L
                window["loss"].append(sums["loss"] / total_w)
                if sums["lm_n"]:
                    window["lm_loss"].append(sums["lm_ce"] / sums["lm_n"])
                if sums["ans_n"]:
                    window["answer_loss"].append(sums["ans_ce"] / sums["ans_n"])
                    window["answer_token_acc"].append(sums["ans_right"] / sums["ans_n"])
                window["grad_norm"].append(float(gnorm))
                bar.update(1)
                if step % cfg.log_every == 0 or step == stop_at:
                    now = time.perf_counter()
                    row = {"step": step, "seq_len": L, "lr": lr, "tokens": tokens_seen,
                           "tokens_per_s": round(tokens_window / max(now - t_window, 1e-9), 1),
                           "elapsed_s": round(elapsed_prev + now - t_start, 2)}
                    row.update({k: round(sum(v) / len(v), 5) for k, v in window.items() if v})
                    row["teacher_forced_exact"] = {task_names[t]: round(r / n, 3)
                                                   for t, (r, n) in sorted(per_task.items())}
                    log_f.write(json.dumps(row) + "\n")
                    log_f.flush()
                    bar.set_postfix(loss=f"{row['loss']:.3f}", ans_acc=f"{row.get('answer_token_acc', 0):.2f}",
                                    L=L)
                    window.clear()
                    per_task.clear()
                    t_window, tokens_window = now, 0
                if main and cfg.eval.every and step % cfg.eval.every == 0 and step < cfg.steps:
                    _quick_eval(cfg, model, tok, step, L, log_f, dev, use_bf16)
                elapsed = time.perf_counter() - t_start
                if stopper.reason is None and time_limit_s is not None and elapsed >= time_limit_s:
                    stopper.reason = "time_limit"
                if world > 1:  # every process stops after the same step, for process 0's reason
                    stopper.reason = _agree_on_stop(stopper.reason, dev)
                if main and (step % cfg.ckpt_every == 0 or step == stop_at or stopper.reason is not None):
                    _atomic_save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
                                  "elapsed_s": elapsed_prev + elapsed, "tokens": tokens_seen,
                                  "devices": devices, "rng": _rng_state(), "recipe": cfg.to_dict(),
                                  "tokenizer_sha256": _sha(tok)},
                                 ckpt_path)
                if stopper.reason is not None:
                    stopped_by = stopper.reason
                    log_f.write(json.dumps({"step": step, "event": "stopped", "reason": stopped_by}) + "\n")
                    break
            if max_steps is not None and step < cfg.steps and stopped_by is None:
                stopped_by = "max_steps"
    finally:
        bar.close()
        log_f.close()
    if world > 1:
        dist.barrier()  # the last checkpoint is written before any process returns
    model.eval()
    return TrainResult(out, step, step >= cfg.steps, stopped_by, model, tok)


_STOP_REASONS = (None, "time_limit", "SIGTERM", "SIGINT")


def _agree_on_stop(reason: str | None, dev: torch.device) -> str | None:
    """The stop reason every process uses: process 0's if it has one, else any process's."""
    codes = torch.zeros(dist.get_world_size(), device=dev)
    codes[dist.get_rank()] = _STOP_REASONS.index(reason)
    dist.all_reduce(codes)
    nonzero = [int(c) for c in codes.tolist() if c]
    if not nonzero:
        return None
    return _STOP_REASONS[int(codes[0])] if codes[0] else _STOP_REASONS[nonzero[0]]


def _all_reduce_floats(values: list[float], dev: torch.device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=dev)
    dist.all_reduce(t)
    return t.tolist()


def _reduce_stats(sums: dict[str, float], n_tasks: int, dev: torch.device) -> dict[str, float]:
    """Step statistics summed over the processes (per-task counts of tasks 0 .. n_tasks - 1
    included), in one collective."""
    keys = ["loss", "lm_ce", "lm_n", "ans_ce", "ans_n", "ans_right"]
    keys += [f"{k}{t}" for t in range(n_tasks) for k in ("right", "seqs")]
    return dict(zip(keys, _all_reduce_floats([sums.get(k, 0.0) for k in keys], dev)))


def _quick_eval(cfg: TrainConfig, model, tok, step: int, seq_len: int, log_f, dev: torch.device,
                use_bf16: bool) -> None:
    """Greedy accuracy on a few fresh eval-split instances at the current sequence length."""
    e = cfg.eval
    tasks = [t for t in e.tasks if get_task(t).min_length <= seq_len - 64]
    if not tasks:
        return
    model.eval()
    t0 = time.perf_counter()
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_bf16):
        rows = evaluate(model, tok, tasks, [seq_len - 64], e.samples, seed=10_000 + step, batch_size=e.batch_size,
                        progress=False)
    model.train()
    scores = {t: round(v[seq_len - 64], 3) for t, v in summarize(rows).items()}
    log_f.write(json.dumps({"step": step, "event": "quick_eval", "length": seq_len - 64, "scores": scores,
                            "seconds": round(time.perf_counter() - t0, 1)}) + "\n")
    log_f.flush()


def estimate_flops(cfg: TrainConfig, vocab_size: int) -> dict[str, float]:
    """Total training FLOPs of the recipe and the tokens it sees."""
    total, tokens = 0.0, 0
    for step in range(cfg.steps):
        L, n, _ = step_layout(cfg.data, step, cfg.steps)
        total += train_flops_per_token(cfg.model, vocab_size, L) * n * L
        tokens += n * L
    return {"flops": total, "tokens": tokens}
