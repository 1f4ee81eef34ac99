"""The training stream: language modelling on stdlib text mixed with task instances.

Every example is a pure function of (recipe seed, step, index in step), so a resumed run sees
exactly the batches an uninterrupted run would, whatever the number of loader workers.
"""
from __future__ import annotations

import bisect
import dataclasses
import hashlib
import os
import random
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..eval.api import FitError, get_task, list_tasks, read_stdlib, stdlib_files
from .config import DataConfig, TrainConfig, draw_params, param_extremes

LM_TASK_ID = -1


def resolve_tokenizer_path(spec: str) -> Path:
    """"default" -> the shipped tokenizer; else a path to a tokenizer.json."""
    from ..assets import TOKENIZER_PATH

    p = TOKENIZER_PATH if spec == "default" else Path(spec)
    if not p.is_file():
        raise FileNotFoundError(f"data.tokenizer: no tokenizer file at {p}")
    return p


def load_train_tokenizer(spec: str):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(resolve_tokenizer_path(spec)))


def special_token_ids(tok) -> tuple[int, int, int]:
    """(pad, bos, eos) ids; the tokenizer must define <|pad|>, <|bos|>, <|eos|>."""
    ids = tuple(tok.token_to_id(t) for t in ("<|pad|>", "<|bos|>", "<|eos|>"))
    if any(i is None for i in ids):
        raise ValueError("data.tokenizer: needs the special tokens <|pad|>, <|bos|> and <|eos|> "
                         "(train one with sparsa.train.tokenizer)")
    return ids  # type: ignore[return-value]


def lm_tokens(tok, max_files: int | None = None, cache_dir: str | Path | None = None) -> np.ndarray:
    """Token ids (int32) of the stdlib "train" split, files in order, each followed by <|eos|>.

    Cached in ``cache_dir`` under a name that depends on the tokenizer and the file list.
    """
    files = list(stdlib_files("train"))
    if max_files is not None:
        files = files[:max_files]
    key = hashlib.sha256((tok.to_str() + "\n".join(files) + sys.version).encode()).hexdigest()[:16]
    cache = Path(cache_dir) / f"lm_tokens_{key}.npy" if cache_dir is not None else None
    if cache is not None and cache.is_file():
        return np.load(cache)
    eos = special_token_ids(tok)[2]
    texts = [read_stdlib(f) for f in files]
    out: list[int] = []
    for enc in tok.encode_batch(texts, add_special_tokens=False):
        out.extend(enc.ids)
        out.append(eos)
    arr = np.asarray(out, dtype=np.int32)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp.npy")
        np.save(tmp, arr)
        os.replace(tmp, cache)
    return arr


def seq_len_at(cfg: DataConfig, step: int, steps: int) -> int:
    """Sequence length of 0-based ``step`` under the curriculum."""
    starts = [s[0] * steps for s in cfg.curriculum]
    return int(cfg.curriculum[bisect.bisect_right(starts, step) - 1][1])


def step_layout(cfg: DataConfig, step: int, steps: int) -> tuple[int, int, int]:
    """(seq_len, sequences per step, sequences per micro-batch) of ``step``."""
    L = seq_len_at(cfg, step, steps)
    n = max(1, cfg.tokens_per_step // L)
    return L, n, max(1, min(n, cfg.micro_batch_tokens // L))


@dataclass
class Example:
    """One training sequence. ids: (L + 1,) int64; weights, answer: (L,) over the targets ids[1:]."""

    ids: torch.Tensor
    weights: torch.Tensor
    answer: torch.Tensor
    task_id: int


class StreamDataset(torch.utils.data.Dataset):
    """Map-style dataset indexed by (step, index_in_step); see ``make_example``."""

    def __init__(self, cfg: TrainConfig, tok, lm: np.ndarray):
        if len(lm) == 0:
            raise ValueError("data.lm_max_files: the language-modelling corpus holds no tokens (no standard-library "
                             "source files were found)")
        self.cfg, self.tok, self.lm = cfg, tok, lm
        d = cfg.data
        self.pad, self.bos, self.eos = special_token_ids(tok)
        names = [n for n, w in d.task_weights.items() if w > 0]
        self.tasks = [get_task(n, **param_extremes(d.task_params.get(n, {}))[1]) for n in names]
        self.task_params = [d.task_params.get(n, {}) for n in names]
        self.task_weights = [float(d.task_weights[n]) for n in names]
        self.task_ids = [list_tasks().index(n) for n in names]

    def __len__(self) -> int:  # pragma: no cover - indexed by tuples through the sampler
        return self.cfg.steps * self.cfg.data.tokens_per_step

    def __getitem__(self, key: tuple[int, int]) -> Example:
        return self.make_example(*key)

    def _lm_window(self, rng: random.Random, n: int) -> list[int]:
        """``n`` consecutive corpus tokens; with probability ``lm_repeat_fraction`` with repeated spans."""
        if n <= 0:
            return []
        start = rng.randrange(max(1, len(self.lm) - n))
        w = self.lm[start:start + n].tolist()
        while len(w) < n:
            w.extend(self.lm[:n - len(w)].tolist())
        if rng.random() < self.cfg.data.lm_repeat_fraction:
            w = _with_repeats(rng, w)
        return w

    def make_example(self, step: int, index: int) -> Example:
        cfg, d = self.cfg, self.cfg.data
        L = seq_len_at(d, step, cfg.steps)
        rng = random.Random(f"{cfg.seed}|{step}|{index}")
        ids: list[int] = [self.bos]
        w: list[float] = []
        ans: list[bool] = []
        task_id = LM_TASK_ID
        inst = None
        if self.tasks and rng.random() >= d.lm_fraction:
            feasible = [(t, wt, tid, tp) for t, wt, tid, tp in
                        zip(self.tasks, self.task_weights, self.task_ids, self.task_params)
                        if t.min_length <= L - t.max_new_tokens(L) - 2]
            if feasible:
                task, _, task_id, params = rng.choices(feasible, weights=[f[1] for f in feasible])[0]
                if any(isinstance(v, list) for v in params.values()):
                    task = dataclasses.replace(task, **draw_params(params, rng))
                room = L - task.max_new_tokens(L) - 2
                target = max(task.min_length, int(rng.uniform(*d.length_fraction) * room))
                inst = _generate_fitting(task, target, room, rng.randrange(2**31), self.tok)
            if inst is None:
                task_id = LM_TASK_ID
            else:
                prompt = self.tok.encode(inst.prompt, add_special_tokens=False).ids
                answer = self.tok.encode(" " + inst.answer_text, add_special_tokens=False).ids + [self.eos]
                answer = answer[:L - len(prompt)]
                ids += prompt + answer
                w += [1.0] * len(prompt) + [d.answer_weight] * len(answer)
                ans += [False] * len(prompt) + [True] * len(answer)
        rest = L + 1 - len(ids)
        if rest > 0:
            if len(ids) > 1:  # a language-modelling document after the task: <|bos|> text
                tail = [self.bos] + self._lm_window(rng, rest - 1)
                w += [0.0] + [1.0] * (rest - 1)
            else:
                tail = self._lm_window(rng, rest)
                w += [1.0] * rest
            ids += tail
            ans += [False] * rest
        return Example(torch.tensor(ids[:L + 1], dtype=torch.long), torch.tensor(w[:L], dtype=torch.float32),
                       torch.tensor(ans[:L], dtype=torch.bool), task_id)


def _generate_fitting(task: Any, target: int, room: int, seed: int, tok: Any) -> Any:
    """``task``'s instance at ``target`` tokens; if its fixed parts need more (drawn parameters such
    as many chains can), at ``room`` tokens; None if it fits in neither (the sequence is then pure
    language modelling)."""
    for n in dict.fromkeys((target, room)):
        try:
            return task.generate(n, seed, tok, split="train")
        except FitError:
            continue
    return None


def _with_repeats(rng: random.Random, text: list[int]) -> list[int]:
    """Interleave ``text`` with copies of spans seen earlier in it (same length out; ~40% copies).

    Predicting a copied span's tokens is pure in-context copying, a dense signal that makes
    the attention heads retrieval needs (induction heads) form early in training.
    """
    n = len(text)
    out: list[int] = []
    pos = 0
    while len(out) < n:
        take = rng.randint(16, 128)
        out.extend(text[pos:pos + take])
        pos += take
        if rng.random() < 0.8:
            k = rng.randint(16, 128)
            s = rng.randrange(0, max(1, len(out) - k))
            out.extend(out[s:s + k])
    return out[:n]


def rank_micro_batches(cfg: DataConfig, step: int, steps: int, rank: int = 0, world: int = 1) -> list[list[int]]:
    """Indices in ``step`` of the micro-batches process ``rank`` of ``world`` trains on.

    The step's sequences are split into ``world`` contiguous shares (sizes differ by at most
    one; a share may be empty), each cut into micro-batches of the step's micro-batch size.
    """
    _, n, mb = step_layout(cfg, step, steps)
    lo, hi = rank * n // world, (rank + 1) * n // world
    return [list(range(i, min(hi, i + mb))) for i in range(lo, hi, mb)]


class StepSampler(torch.utils.data.Sampler):
    """Yields the micro-batches [(step, i), ...] of steps ``start`` .. ``stop - 1`` in order
    (those of process ``rank`` of ``world``)."""

    def __init__(self, cfg: TrainConfig, start: int, stop: int, rank: int = 0, world: int = 1):
        self.cfg, self.start, self.stop, self.rank, self.world = cfg, start, stop, rank, world

    def _batches(self, step: int) -> list[list[int]]:
        return rank_micro_batches(self.cfg.data, step, self.cfg.steps, self.rank, self.world)

    def __iter__(self):
        for step in range(self.start, self.stop):
            for idx in self._batches(step):
                yield [(step, j) for j in idx]

    def __len__(self) -> int:
        return sum(len(self._batches(step)) for step in range(self.start, self.stop))


def collate(batch: list[Example]) -> dict[str, Any]:
    return {"ids": torch.stack([b.ids for b in batch]), "weights": torch.stack([b.weights for b in batch]),
            "answer": torch.stack([b.answer for b in batch]),
            "task_id": torch.tensor([b.task_id for b in batch], dtype=torch.long)}


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)
    # a stop signal sent to the whole process group is the main process's to handle: it
    # checkpoints after the current step and then shuts the workers down itself
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def make_loader(cfg: TrainConfig, dataset: StreamDataset, start: int, stop: int, rank: int = 0, world: int = 1):
    """DataLoader over the micro-batches of steps [start, stop) (process ``rank``'s share of each)."""
    nw = cfg.data.num_workers
    kw: dict[str, Any] = {}
    if nw > 0:
        kw = {"prefetch_factor": 4, "persistent_workers": False, "worker_init_fn": _worker_init}
    return torch.utils.data.DataLoader(dataset, batch_sampler=StepSampler(cfg, start, stop, rank, world),
                                       num_workers=nw,
                                       collate_fn=collate, pin_memory=torch.cuda.is_available(), **kw)
