"""Task base class, task instances and the length fitter shared by all generators."""
from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..corpus import haystack_lines
from ..scoring import Scorer
from ..tokenization import TASK_CHARSET, TokenCounter, check_tokenizer

SPLITS = ("train", "eval")
LOW_FRACTION = 0.9  # a prompt fills 90-100% of the requested length
_ATTEMPTS = 8  # fresh draws tried when the filler cannot hit the length window


class FitError(ValueError):
    """The filler units could not bring a prompt into 90-100% of the requested length."""


@dataclass(frozen=True)
class TaskInstance:
    """One generated example.

    ``prompt`` ends with "Answer:"; the model should continue with " " + ``answer_text``.
    ``answer`` is the reference (a string, or a tuple of strings for list answers);
    ``n_tokens`` is the prompt's length in tokens of the tokenizer it was made for.
    Unpacks as ``prompt, answer, scorer = instance``.
    """

    task: str
    length: int
    seed: int
    prompt: str
    answer: str | tuple[str, ...]
    answer_text: str
    metric: str
    n_tokens: int
    max_new_tokens: int
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def scorer(self) -> Scorer:
        return Scorer(self.metric, self.answer)

    def score(self, prediction: str) -> float:
        """Score of a generated continuation in [0, 1]."""
        return self.scorer(prediction)

    def __iter__(self) -> Iterator[Any]:
        return iter((self.prompt, self.answer, self.scorer))


@dataclass
class Task:
    """Base of all task generators. Subclasses set the class attributes and implement ``_build``.

    Generators are deterministic: the same (task parameters, length, seed, split, tokenizer)
    gives the same instance in any process.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    metric: ClassVar[str] = "exact"
    min_length: ClassVar[int] = 256

    def max_new_tokens(self, length: int) -> int:
        """Generation budget for an answer, in tokens (from the task's shape, not its answer)."""
        return 16

    def generate(self, length: int, seed: int, tokenizer: Any, *, split: str = "eval") -> TaskInstance:
        """Make one instance whose prompt has 90-100% of ``length`` tokens.

        length: target prompt length in tokens (>= ``min_length``).
        seed: any int; instances are a pure function of it (with length, split, parameters).
        tokenizer: a ``tokenizers.Tokenizer``, a HuggingFace tokenizer or an encode/decode object.
        split: "eval" (haystacks from held-out stdlib files) or "train".
        """
        if isinstance(length, bool) or not isinstance(length, int):
            raise TypeError(f"length: expected an int number of tokens, got {type(length).__name__}")
        if length < self.min_length:
            raise ValueError(f"length: task {self.name!r} needs at least {self.min_length} tokens, got {length}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed: expected an int, got {type(seed).__name__}")
        if split not in SPLITS:
            raise ValueError(f"split: must be one of {', '.join(SPLITS)}, got {split!r}")
        counter = TokenCounter(tokenizer)
        check_tokenizer(counter, TASK_CHARSET, "characters the tasks use")
        for attempt in range(_ATTEMPTS):
            rng = random.Random(f"{self.name}|{length}|{seed}|{split}|{self._param_key()}|{attempt}")
            try:
                prompt, answer, meta = self._build(rng, counter, length, split)
                break
            except FitError:
                if attempt == _ATTEMPTS - 1:
                    raise
        answer_text = answer if isinstance(answer, str) else ", ".join(answer)
        check_tokenizer(counter, answer_text, "answer")
        n_tokens = counter.count(prompt)
        return TaskInstance(task=self.name, length=length, seed=seed, prompt=prompt,
                            answer=answer if isinstance(answer, str) else tuple(answer),
                            answer_text=answer_text, metric=self.metric, n_tokens=n_tokens,
                            max_new_tokens=self.max_new_tokens(length), meta=meta)

    def _param_key(self) -> str:
        return ",".join(f"{k}={v}" for k, v in sorted(vars(self).items()))

    def _build(self, rng: random.Random, counter: TokenCounter, length: int,
               split: str) -> tuple[str, str | list[str], dict[str, Any]]:
        raise NotImplementedError


def fit_to_length(build: Callable[[int], str], counter: TokenCounter, target: int, task: str,
                  n_max: int | None = None) -> tuple[str, int]:
    """Find a filler count ``n`` with ``counter.count(build(n))`` in [0.9 * target, target].

    build(n) must give a text whose token count grows with n. Returns (text, n).
    Secant steps towards 95% of the target, then bisection on the bracket found.
    """
    lo_ok, hi_ok = math.ceil(LOW_FRACTION * target), target
    aim = (lo_ok + hi_ok) / 2
    text = build(0)
    c0 = counter.count(text)
    if c0 > hi_ok:
        raise FitError(f"length: {target} tokens is too short for task {task!r} with these parameters "
                         f"(its fixed parts alone take {c0} tokens)")
    if c0 >= lo_ok:
        return text, 0
    probe = max(1, min(32, n_max or 32))
    per_unit = max((counter.count(build(probe)) - c0) / probe, 1e-3)
    lo, c_lo = 0, c0          # invariant: c_lo < lo_ok
    hi, c_hi = None, None     # invariant: c_hi > hi_ok
    for it in range(64):
        if hi is None:
            n = lo + max(1, round((aim - c_lo) / per_unit))
            if n_max is not None:
                if lo >= n_max:
                    break
                n = min(n, n_max)
        else:
            if hi - lo <= 1:
                break
            # interpolate, but every other step bisect so a bad slope estimate cannot stall the search
            n = lo + round((aim - c_lo) / per_unit) if it % 2 == 0 else (lo + hi) // 2
            n = min(max(n, lo + 1), hi - 1)
        text = build(n)
        c = counter.count(text)
        if lo_ok <= c <= hi_ok:
            return text, n
        if c < lo_ok:
            lo, c_lo = n, c
        else:
            hi, c_hi = n, c
        per_unit = max(((c_hi - c_lo) / (hi - lo)) if hi is not None else (c - c0) / n, 1e-3)
    raise FitError(f"length: could not fit task {task!r} into 90-100% of {target} tokens with this "
                     "tokenizer (a filler unit is too coarse for the requested length)")


class LineHaystack:
    """Consecutive stdlib source lines from a seeded starting point (wrapping around the split)."""

    def __init__(self, rng: random.Random, split: str):
        self.lines = haystack_lines(split)
        self.start = rng.randrange(len(self.lines))

    def take(self, n: int) -> list[str]:
        lines, s = self.lines, self.start
        out = list(lines[s:s + n])
        while len(out) < n:
            out.extend(lines[:n - len(out)])
        return out


def insert_at_depths(units: list[str], inserts: list[tuple[float, str]]) -> list[str]:
    """Insert each (depth in [0, 1], text) into ``units`` at index round(depth * len(units)).

    Inserts keep their given order when they land at the same place.
    """
    n = len(units)
    by_pos: dict[int, list[str]] = {}
    for depth, text in inserts:
        by_pos.setdefault(min(n, max(0, round(depth * n))), []).append(text)
    out: list[str] = []
    for i in range(n + 1):
        out.extend(by_pos.get(i, ()))
        if i < n:
            out.append(units[i])
    return out
