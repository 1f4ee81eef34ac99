"""Scorers: compare a model's generated answer with the reference, returning a score in [0, 1].

The prediction is cut at its first non-empty line; comparison is on lowercase alphanumeric
"items" (words and numbers), so punctuation and spacing do not matter.

- ``exact``: the prediction's items equal the answer's items.
- ``set_f1``: F1 between the sets of items (for lists whose order does not matter).
- ``set_iou``: |pred ∩ ans| / |pred ∪ ans| over the sets of items.
- ``list_accuracy``: fraction of answer positions whose item the prediction has at the same position.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

METRICS = ("exact", "set_f1", "set_iou", "list_accuracy")
_ITEM = re.compile(r"[a-z0-9]+")


def first_line(prediction: str) -> str:
    """The first non-empty line of a generated continuation."""
    for line in prediction.splitlines():
        if line.strip():
            return line
    return ""


def items(text: str) -> list[str]:
    """Lowercase alphanumeric items of ``text`` in order ("Ada, 42." -> ["ada", "42"])."""
    return _ITEM.findall(text.lower())


def _answer_items(answer: str | Sequence[str]) -> list[str]:
    if isinstance(answer, str):
        return items(answer)
    out: list[str] = []
    for a in answer:
        out.extend(items(a))
    return out


def exact(prediction: str, answer: str | Sequence[str]) -> float:
    return float(items(first_line(prediction)) == _answer_items(answer))


def set_f1(prediction: str, answer: str | Sequence[str]) -> float:
    p, a = set(items(first_line(prediction))), set(_answer_items(answer))
    if not p or not a:
        return float(p == a)
    tp = len(p & a)
    return 0.0 if tp == 0 else 2 * tp / (len(p) + len(a))


def set_iou(prediction: str, answer: str | Sequence[str]) -> float:
    p, a = set(items(first_line(prediction))), set(_answer_items(answer))
    if not p and not a:
        return 1.0
    return len(p & a) / len(p | a)


def list_accuracy(prediction: str, answer: str | Sequence[str]) -> float:
    p, a = items(first_line(prediction)), _answer_items(answer)
    if not a:
        return float(not p)
    return sum(1 for i, x in enumerate(a) if i < len(p) and p[i] == x) / len(a)


_FUNCS: dict[str, Callable[[str, str | Sequence[str]], float]] = {
    "exact": exact, "set_f1": set_f1, "set_iou": set_iou, "list_accuracy": list_accuracy}


@dataclass(frozen=True)
class Scorer:
    """A picklable ``prediction -> score`` callable bound to one answer and one metric."""

    metric: str
    answer: str | tuple[str, ...]

    def __post_init__(self) -> None:
        if self.metric not in _FUNCS:
            raise ValueError(f"metric: unknown metric {self.metric!r}; available: {', '.join(METRICS)}")

    def __call__(self, prediction: str) -> float:
        if not isinstance(prediction, str):
            raise TypeError(f"prediction: expected str, got {type(prediction).__name__}")
        return _FUNCS[self.metric](prediction, self.answer)
