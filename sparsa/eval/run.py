"""Run the task suite on a model: greedy answers, scores, resumable JSON-lines results.

``evaluate`` is method-agnostic: it takes a model (a HuggingFace causal LM, already set up
with whatever attention it should use) or a plain ``generate(prompt, max_new_tokens) -> str``
callable, and a tokenizer.
"""
from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .tasks import get_task, list_tasks
from .tokenization import TokenCounter, encode_for_model, special_ids

Row = dict[str, Any]


def instance_seed(seed: int, sample: int) -> int:
    """Seed of sample ``sample`` of a run seeded ``seed`` (distinct for seeds < 1,000,000 samples apart)."""
    return seed * 1_000_003 + sample


def _task_specs(tasks: Sequence[str] | Mapping[str, Mapping[str, Any]] | None) -> dict[str, dict[str, Any]]:
    if tasks is None:
        return {t: {} for t in list_tasks()}
    if isinstance(tasks, str):
        tasks = [tasks]
    if isinstance(tasks, Mapping):
        return {str(k): dict(v or {}) for k, v in tasks.items()}
    return {str(t): {} for t in tasks}


def read_rows(path: str | Path) -> list[Row]:
    """Rows of a results file (JSON lines); a truncated last line (interrupted write) is ignored."""
    p = Path(path)
    if not p.exists():
        return []
    rows = []
    lines = p.read_text().splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise ValueError(f"out: {p} line {i + 1} is not valid JSON") from None
    return rows


def shard_cells(cells: Sequence[tuple[str, int]], index: int, count: int) -> list[tuple[str, int]]:
    """The (task, length) cells shard ``index`` of ``count`` evaluates: cells are dealt longest
    first to the shard with the least work so far (work ~ length), the same on every process."""
    load = [0] * count
    mine = []
    for cell in sorted(cells, key=lambda c: (-c[1], c[0])):
        j = min(range(count), key=lambda k: (load[k], k))
        load[j] += cell[1]
        if j == index:
            mine.append(cell)
    return mine


def drop_partial_line(path: str | Path) -> None:
    """Cut an unfinished last line (an interrupted write) so appended rows start on a new line."""
    path = Path(path)
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(path, "r+b") as fh:             # in place: the complete rows are never rewritten
            fh.truncate(data.rfind(b"\n") + 1)


class _NewlineStop:
    """Stops a row once its generated text contains a newline after some non-space text."""

    def __init__(self, counter: TokenCounter, prompt_len: int):
        self.counter, self.prompt_len = counter, prompt_len

    def done(self, ids: Sequence[int]) -> bool:
        text = self.counter.decode(list(ids)[self.prompt_len:])
        return "\n" in text.lstrip()


def _hf_generate(model: Any, tokenizer: Any, prompts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
    """Greedy continuation ids for a batch of prompts (left-padded)."""
    from transformers import StoppingCriteria, StoppingCriteriaList  # local: defers transformers

    ids = special_ids(tokenizer)
    eos, pad = ids["eos"], ids["pad"] if ids["pad"] is not None else (ids["eos"] or 0)
    counter = TokenCounter(tokenizer)
    width = max(len(p) for p in prompts)
    device = next(model.parameters()).device
    inp = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        inp[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    stop = _NewlineStop(counter, width)

    class _Stop(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return torch.tensor([stop.done(row.tolist()) for row in input_ids], device=input_ids.device)

    with torch.no_grad():
        out = model.generate(input_ids=inp.to(device), attention_mask=mask.to(device), do_sample=False,
                             max_new_tokens=max_new_tokens, eos_token_id=eos, pad_token_id=pad,
                             stopping_criteria=StoppingCriteriaList([_Stop()]), num_beams=1)
    res = []
    for row in out[:, width:].tolist():
        if eos is not None and eos in row:
            row = row[:row.index(eos)]
        res.append([t for t in row if t != pad])
    return res


def evaluate(model: Any, tokenizer: Any, tasks: Sequence[str] | Mapping[str, Mapping[str, Any]] | None,
             lengths: Sequence[int], n_samples: int, seed: int = 0, *, out: str | Path | None = None,
             batch_size: int = 1, split: str = "eval", progress: bool = True,
             extra: Mapping[str, Any] | None = None, time_limit_s: float | None = None,
             shard: tuple[int, int] | None = None) -> list[Row]:
    """Generate greedy answers for tasks x lengths x samples and score them.

    model: a HuggingFace causal LM (anything with ``generate`` and ``parameters``) or a callable
        ``generate(prompt: str, max_new_tokens: int) -> str``.
    tokenizer: the model's tokenizer (``tokenizers.Tokenizer`` or HuggingFace tokenizer).
    tasks: task names, or {name: task parameters}; None = every registered task.
    lengths: prompt lengths in tokens.
    n_samples: instances per (task, length); sample i uses seed ``instance_seed(seed, i)``.
    out: JSON-lines file; rows are appended as they finish, and (task, length, sample) already
        in it are skipped, so an interrupted run continues where it stopped.
    batch_size: prompts per ``generate`` call for HuggingFace models (left padding).
    extra: constant fields added to every row (e.g. the method and its compression).
    time_limit_s: start no new batch after this many seconds (the rows so far are kept; a
        later call with the same ``out`` continues).
    shard: (index, count): evaluate only this process's share of the (task, length) cells (see
        :func:`shard_cells`), for several processes appending to one ``out`` (each row is one
        write); the caller drops a partial last line of ``out`` (:func:`drop_partial_line`)
        before any process starts.

    Returns the rows of the grid done so far (loaded and new; all of them unless stopped by
    ``time_limit_s``), each
    {task, length, sample, seed, n_tokens, metric, answer, prediction, score, seconds, ...extra}.
    """
    specs = _task_specs(tasks)
    task_objs = {name: get_task(name, **params) for name, params in specs.items()}
    if isinstance(lengths, int):
        lengths = [lengths]
    lengths = [int(x) for x in lengths]
    for name, t in task_objs.items():
        short = [x for x in lengths if x < t.min_length]
        if short:
            raise ValueError(f"lengths: task {name!r} needs at least {t.min_length} tokens, got {short}")
    if not isinstance(n_samples, int) or n_samples < 1:
        raise ValueError(f"n_samples: must be an int >= 1, got {n_samples!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: must be an int >= 1, got {batch_size!r}")
    is_hf = hasattr(model, "generate") and hasattr(model, "parameters")
    if not is_hf and not callable(model):
        raise TypeError("model: expected a HuggingFace causal LM or a callable generate(prompt, max_new_tokens)")
    extra = dict(extra or {})

    done: dict[tuple[str, int, int], Row] = {}
    if out is not None:
        for r in read_rows(out):
            if all(r.get(k) == v for k, v in extra.items()):
                done[(r["task"], int(r["length"]), int(r["sample"]))] = r
        for (name, length, sample), r in done.items():
            if name in task_objs and r.get("seed") != instance_seed(seed, sample):
                raise ValueError(f"out: {out} holds results of another seed ({r.get('seed')} for sample "
                                 f"{sample}); use another file or the same seed")
    grid = [(n, L, s) for n in task_objs for L in lengths for s in range(n_samples)]
    if shard is not None:
        mine = set(shard_cells([(n, L) for n in task_objs for L in lengths], *shard))
        grid = [k for k in grid if k[:2] in mine]
    todo = [k for k in grid if k not in done]


    bar = tqdm(total=len(grid), initial=len(grid) - len(todo), desc="eval", disable=not progress, unit="ex")
    fh = None
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        if shard is None:
            drop_partial_line(out)
        fh = open(out, "a", buffering=1 << 20)  # a row reaches the file in one write (at its flush)
    counter = TokenCounter(tokenizer)
    t_start = time.perf_counter()
    try:
        groups: dict[tuple[str, int], list[int]] = defaultdict(list)
        for name, L, s in todo:
            groups[(name, L)].append(s)
        for (name, L), samples in groups.items():
            step = batch_size if is_hf else 1
            for i in range(0, len(samples), step):
                if time_limit_s is not None and time.perf_counter() - t_start >= time_limit_s:
                    break
                chunk = samples[i:i + step]
                insts = [task_objs[name].generate(L, instance_seed(seed, s), tokenizer, split=split) for s in chunk]
                t0 = time.perf_counter()
                if is_hf:
                    prompts = [encode_for_model(tokenizer, x.prompt) for x in insts]
                    gen = _hf_generate(model, tokenizer, prompts, max(x.max_new_tokens for x in insts))
                    preds = [counter.decode(g) for g in gen]
                else:
                    preds = [str(model(x.prompt, x.max_new_tokens)) for x in insts]
                dt = (time.perf_counter() - t0) / len(insts)
                for s, x, pred in zip(chunk, insts, preds):
                    row = {"task": name, "length": L, "sample": s, "seed": x.seed, "n_tokens": x.n_tokens,
                           "metric": x.metric, "answer": x.answer_text, "prediction": pred,
                           "score": x.score(pred), "seconds": round(dt, 4), **extra}
                    done[(name, L, s)] = row
                    if fh is not None:
                        fh.write(json.dumps(row) + "\n")
                        fh.flush()
                bar.update(len(chunk))
    finally:
        bar.close()
        if fh is not None:
            fh.close()
    return [done[k] for k in grid if k in done]


def summarize(rows: Sequence[Row]) -> dict[str, dict[int, float]]:
    """task -> {length: mean score} over the rows."""
    acc: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        acc[r["task"]][int(r["length"])].append(float(r["score"]))
    return {t: {L: sum(v) / len(v) for L, v in sorted(d.items())} for t, d in acc.items()}


def half_score_length(scores: Mapping[int, float], reference: int = 4096) -> int | None:
    """The first length above ``reference`` whose score is below half the score at ``reference``.

    None if the score never falls below half within the lengths measured (or there is no
    reference score).
    """
    if reference not in scores or scores[reference] <= 0:
        return None
    for L in sorted(scores):
        if L > reference and scores[L] < scores[reference] / 2:
            return L
    return None
