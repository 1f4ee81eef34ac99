"""Task base class, task instances and the length fitter shared by all generators."""
from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..corpus import haystack_lines
from ..prompts import PromptRenderer
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

    ``prompt`` is the rendered prompt (see :mod:`sparsa.eval.prompts`): in the "chat" and
    "plain" styles it ends with ``answer_prefix`` ("The special number for quiet-harbor is"),
    in the "legacy" style with "Answer:"; either way the model should continue with
    " " + ``answer_text``. ``context`` is the haystack part, ``question`` the question (without
    its "Question: " label), ``style`` the style ``prompt`` was rendered in.
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
    context: str = ""
    question: str = ""
    answer_prefix: str = ""
    style: str = "legacy"
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def scorer(self) -> Scorer:
        return Scorer(self.metric, self.answer, answer_prefix=self.answer_prefix, question=self.question)

    def score(self, prediction: str) -> float:
        """Partial-credit score of a generated continuation in [0, 1] (the task's metric)."""
        return self.scorer(prediction)

    def exact(self, prediction: str) -> float:
        """All-or-nothing score of a generated continuation (see :mod:`sparsa.eval.scoring`)."""
        return self.scorer.exact(prediction)

    def scores(self, prediction: str) -> dict[str, float]:
        """{"score": partial credit, "exact": all-or-nothing} of a generated continuation."""
        return self.scorer.scores(prediction)

    def __iter__(self) -> Iterator[Any]:
        return iter((self.prompt, self.answer, self.scorer))


@dataclass(frozen=True)
class Parts:
    """The pieces of a prompt before rendering: haystack, question, answer prefix."""

    context: str
    question: str
    answer_prefix: str


class Fitter:
    """Fits a task's context so that its rendered prompt has 90-100% of ``length`` tokens.

    Generators build the context from a filler count; the fitter renders the whole prompt
    (chat template and answer prefix included) for every count it tries.
    """

    def __init__(self, counter: TokenCounter, renderer: PromptRenderer, length: int, task: str):
        self.counter, self.renderer, self.length, self.task = counter, renderer, length, task

    def render(self, context: str, question: str, answer_prefix: str) -> str:
        return self.renderer.render(context, question, answer_prefix)

    def count(self, context: str, question: str, answer_prefix: str) -> int:
        """Tokens of the rendered prompt (no special tokens added by encoding)."""
        return self.counter.count(self.render(context, question, answer_prefix))

    def fit(self, build_context: Callable[[int], str], question: str, answer_prefix: str,
            n_max: int | None = None) -> tuple[Parts, int]:
        """(parts, n): ``build_context(n)`` with the filler count ``n`` that fits (see :func:`fit_to_length`)."""
        ctx: dict[int, str] = {}

        def build(n: int) -> str:
            ctx[n] = build_context(n)
            return self.render(ctx[n], question, answer_prefix)

        _, n = fit_to_length(build, self.counter, self.length, self.task, n_max)
        return Parts(ctx[n], question, answer_prefix), n


@dataclass
class Task:
    """Base of all task generators. Subclasses set the class attributes and implement ``_build``.

    Generators are deterministic: the same (task parameters, length, seed, split, tokenizer,
    style) gives the same instance in any process. ``style`` picks how the prompt is rendered
    (see :mod:`sparsa.eval.prompts`; None chooses by tokenizer); it is not part of the seed, so
    the styles draw the same facts wherever the fitted length does not feed back into the draw
    (it does for the chapter and document counts and the order of the common words).
    """

    style: str | None = None

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    metric: ClassVar[str] = "exact"
    min_length: ClassVar[int] = 256

    def max_new_tokens(self, length: int) -> int:
        """Generation budget for an answer, in tokens (from the task's shape, not its answer)."""
        return 16

    def generate(self, length: int, seed: int, tokenizer: Any, *, split: str = "eval",
                 style: str | None = None) -> TaskInstance:
        """Make one instance whose rendered prompt has 90-100% of ``length`` tokens.

        length: target prompt length in tokens (>= ``min_length``).
        seed: any int; instances are a pure function of it (with length, split, parameters).
        tokenizer: a ``tokenizers.Tokenizer``, a HuggingFace tokenizer or an encode/decode object.
        split: "eval" (haystacks from held-out stdlib files) or "train".
        style: "chat", "plain" or "legacy"; default the task's ``style``, else chosen by tokenizer.
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
        renderer = PromptRenderer(tokenizer, style if style is not None else self.style)
        fitter = Fitter(counter, renderer, length, self.name)
        for attempt in range(_ATTEMPTS):
            rng = random.Random(f"{self.name}|{length}|{seed}|{split}|{self._param_key()}|{attempt}")
            try:
                parts, answer, meta = self._build(rng, fitter, split)
                break
            except FitError:
                if attempt == _ATTEMPTS - 1:
                    raise
        answer_text = answer if isinstance(answer, str) else ", ".join(answer)
        check_tokenizer(counter, answer_text, "answer")
        prompt = renderer.render(parts.context, parts.question, parts.answer_prefix)
        n_tokens = counter.count(prompt)
        return TaskInstance(task=self.name, length=length, seed=seed, prompt=prompt,
                            answer=answer if isinstance(answer, str) else tuple(answer),
                            answer_text=answer_text, metric=self.metric, n_tokens=n_tokens,
                            max_new_tokens=self.max_new_tokens(length), context=parts.context,
                            question=parts.question, answer_prefix=parts.answer_prefix, style=renderer.style,
                            meta=meta)

    def _param_key(self) -> str:
        # the style is left out: the same seed draws the same facts in every style
        return ",".join(f"{k}={v}" for k, v in sorted(vars(self).items()) if k != "style")

    def _build(self, rng: random.Random, fitter: Fitter, split: str) -> tuple[Parts, str | list[str], dict[str, Any]]:
        """(prompt parts fitted with ``fitter``, reference answer, metadata) from the seeded ``rng``."""
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
