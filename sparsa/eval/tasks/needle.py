"""Needle-in-a-haystack retrieval tasks over standard-library source text.

A needle is the sentence "The special number for <key> is <value>." placed as its own line
between source lines at a random depth. Keys are two words joined by a hyphen
("quiet-harbor"); values are 7-digit numbers.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from .base import Fitter, LineHaystack, Parts, Task, insert_at_depths
from .words import ADJECTIVES, NOUNS

HEADER = ("The text below hides special numbers, each given for a key. "
          "A question about them follows the text.\n\n")


TEMPLATES = (HEADER, "The special number for is.", "Question: What is the special number for?",
             "Question: What are all the special numbers for?", "Question: What are the special numbers for and?",
             "Answer:")


def needle(key: str, value: str) -> str:
    return f"The special number for {key} is {value}."


def _values(rng: random.Random, n: int) -> list[str]:
    return [str(v) for v in rng.sample(range(1_000_000, 10_000_000), n)]


def _random_keys(rng: random.Random, n: int, exclude: set[str]) -> list[str]:
    out: list[str] = []
    seen = set(exclude)
    while len(out) < n:
        k = f"{rng.choice(ADJECTIVES)}-{rng.choice(NOUNS)}"
        if k not in seen:
            seen.add(k)
            out.append(k)
    return out


def _lookalike_keys(rng: random.Random, target: str, n: int, exclude: set[str]) -> list[str]:
    """Keys sharing one word with ``target`` (half its first word, half its second), then random ones."""
    adj, noun = target.split("-")
    pool = [f"{adj}-{x}" for x in NOUNS if x != noun] + [f"{x}-{noun}" for x in ADJECTIVES if x != adj]
    pool = [k for k in pool if k not in exclude]
    rng.shuffle(pool)
    out = pool[:n // 2 + n % 2]
    return out + _random_keys(rng, n - len(out), exclude | set(out))


def _build_haystack(rng: random.Random, fitter: Fitter, split: str, needles: list[str], question: str,
                    answer_prefix: str) -> Parts:
    """Fill a stdlib-line haystack around ``needles`` (placed in order at sorted random depths)."""
    hay = LineHaystack(rng, split)
    depths = sorted(rng.random() for _ in needles)
    inserts = list(zip(depths, needles))

    def build(n: int) -> str:
        return HEADER + "\n".join(insert_at_depths(hay.take(n), inserts))

    parts, _ = fitter.fit(build, question, answer_prefix)
    return parts


@dataclass
class SingleNeedle(Task):
    """One needle in a haystack of source code; the question asks for its value.

    Tests: plain retrieval of one fact from anywhere in the context. Metric: exact match.
    """

    name = "niah_single"
    description = "One key-value needle hidden in source code; retrieve the value (exact match)."
    metric = "exact"
    min_length = 128

    def _build(self, rng, fitter, split):
        key = _random_keys(rng, 1, set())[0]
        value = _values(rng, 1)[0]
        q = f"What is the special number for {key}?"
        parts = _build_haystack(rng, fitter, split, [needle(key, value)], q, f"The special number for {key} is")
        return parts, value, {"key": key}


@dataclass
class MultiKey(Task):
    """Many needles with look-alike keys; only one key is asked about.

    Tests: precise key matching among distractors that share a word with the target key.
    ``distractors`` defaults to one per 256 tokens of context (at least 3). Metric: exact match.
    """

    name = "niah_multikey"
    description = ("One target needle among many look-alike key-value distractors; retrieve the target's "
                   "value (exact match).")
    metric = "exact"
    min_length = 256
    distractors: int | None = None

    def _build(self, rng, fitter, split):
        n_d = self.distractors if self.distractors is not None else max(3, fitter.length // 256)
        key = _random_keys(rng, 1, set())[0]
        others = _lookalike_keys(rng, key, n_d, {key})
        values = _values(rng, n_d + 1)
        pairs = [(key, values[0])] + list(zip(others, values[1:]))
        rng.shuffle(pairs)
        q = f"What is the special number for {key}?"
        parts = _build_haystack(rng, fitter, split, [needle(k, v) for k, v in pairs], q,
                                f"The special number for {key} is")
        return parts, values[0], {"key": key, "distractors": n_d}


@dataclass
class MultiValue(Task):
    """One key given several values in separate needles; the question asks for all of them.

    Tests: retrieving every occurrence, not just the first. Answer: the values in order of
    appearance. Metric: set F1.
    """

    name = "niah_multivalue"
    description = "One key with several values spread over the context; list all values (set F1)."
    metric = "set_f1"
    min_length = 256
    values: int = 4
    distractors: int = 2

    def max_new_tokens(self, length: int) -> int:
        # room for a chat model's list, one "- key: 1234567" line per value (digits are often
        # one token each)
        return 16 * self.values + 16

    def _build(self, rng, fitter, split):
        key = _random_keys(rng, 1, set())[0]
        others = _random_keys(rng, self.distractors, {key})
        vals = _values(rng, self.values + self.distractors)
        items = [(key, v) for v in vals[:self.values]] + list(zip(others, vals[self.values:]))
        rng.shuffle(items)
        answer = [v for k, v in items if k == key]
        q = f"What are all the special numbers for {key}?"
        parts = _build_haystack(rng, fitter, split, [needle(k, v) for k, v in items], q,
                                f"The special numbers for {key} are")
        return parts, answer, {"key": key}


@dataclass
class MultiQuery(Task):
    """Several needles with different keys, all asked about in one question.

    Tests: several independent retrievals from one context (the case where sparse methods
    that keep one set of tokens for all queries fail first). Answer: values in the order the
    keys are asked. Metric: fraction of positions right (list accuracy).
    """

    name = "niah_multiquery"
    description = ("Several needles asked about in one question; give each value in the asked order "
                   "(list accuracy).")
    metric = "list_accuracy"
    min_length = 256
    queries: int = 4
    distractors: int = 4

    def max_new_tokens(self, length: int) -> int:
        return 16 * self.queries + 16  # as MultiValue: a list line per asked key

    def _build(self, rng, fitter, split):
        keys = _random_keys(rng, self.queries + self.distractors, set())
        vals = _values(rng, len(keys))
        pairs = list(zip(keys, vals))
        asked = pairs[:self.queries]
        rng.shuffle(pairs)
        names = [k for k, _ in asked]
        listed = ", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else names[0]
        q = f"What are the special numbers for {listed}?"
        parts = _build_haystack(rng, fitter, split, [needle(k, v) for k, v in pairs], q,
                                f"The special numbers for {listed} are")
        return parts, [v for _, v in asked], {"keys": names}


