"""Scorers: compare a model's generated answer with the reference, returning scores in [0, 1].

A prediction is the model's continuation of the prompt, which ends with the task's answer
prefix ("The special number for quiet-harbor is") or, in the legacy format, with "Answer:".
Parsing tolerates the model's own phrasing:

1. markdown emphasis, quotes and punctuation do not matter: comparison is on lowercase
   alphanumeric "items" (words and numbers);
2. only the first non-empty line counts, unless it ends with ":" (a list follows): then the
   list lines up to the next blank line count too, without their bullets or "1." numbering;
3. a restatement of the answer prefix is cut: if the line starts with it ("The special number
   for X is 1234567."), that opening is skipped, and everything from its next occurrence on is
   dropped (a model repeating the sentence has already answered);
4. items that are words of the question or of the answer prefix ("the lamp was hidden in the
   attic") and a few connectives ("and", "the", "is", "var", "chapters", ...) are ignored,
   unless they are items of the reference answer.

Each prediction gets two numbers:

- ``exact`` (all-or-nothing): the parsed items equal the reference items as a multiset
  (order does not matter, except for ``list_accuracy`` tasks, whose answers are asked in order),
  so a list answer needs every expected item, no extra item and no duplicate;
- ``score`` (partial credit), by the task's metric:

  - ``exact``: as above;
  - ``set_f1``: F1 between the multisets of items: a duplicated item counts as an extra
    prediction and lowers precision (the name is kept from when sets were compared);
  - ``set_iou``: multiset intersection over union (duplicates enlarge the union);
  - ``list_accuracy``: answer positions whose item the prediction has at the same position,
    divided by max(answer length, prediction length), so extra items cost credit.
"""
from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

METRICS = ("exact", "set_f1", "set_iou", "list_accuracy")
_ITEM = re.compile(r"[a-z0-9]+")
# connecting words a model puts around answer items; never dropped when they are reference items
CONNECTIVES = frozenset({"a", "an", "the", "is", "are", "was", "were", "and", "in", "of", "var", "chapter",
                         "chapters", "answer"})
_MARKER_ITEMS = 3  # a restatement is recognised by the answer prefix's first items


def first_line(prediction: str) -> str:
    """The first non-empty line of a generated continuation."""
    for line in prediction.splitlines():
        if line.strip():
            return line
    return ""


_BULLET = re.compile(r"^\s*(?:[-*\u2022]|\d+[.)])\s+")


def answer_text(prediction: str) -> str:
    """The part of a continuation that holds the answer: the first non-empty line, plus the list
    lines after it when it ends with ":"."""
    lines = prediction.splitlines()
    for i, line in enumerate(lines):
        if line.strip():
            break
    else:
        return ""
    if not lines[i].rstrip().endswith(":"):
        return lines[i]
    out = [lines[i]]
    for line in lines[i + 1:]:
        if not line.strip():
            if len(out) > 1:
                break
            continue
        out.append(_BULLET.sub("", line))
    return " ".join(out)


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


def _find(seq: list[str], sub: list[str], start: int) -> int:
    n = len(sub)
    for i in range(start, len(seq) - n + 1):
        if seq[i:i + n] == sub:
            return i
    return -1


def parse_items(prediction: str, answer: str | Sequence[str], *, answer_prefix: str = "",
                ignore: str = "") -> list[str]:
    """The answer items a prediction gives (see the module docstring for the rules).

    answer_prefix: the text the prompt ends with (restatements of it are cut).
    ignore: text whose words are not answer items (the question), unless they are reference items.
    """
    got = items(answer_text(prediction))
    prefix = items(answer_prefix)
    if prefix:
        marker = prefix[:_MARKER_ITEMS]
        start = 0
        if got[:len(prefix)] == prefix:
            start = len(prefix)
        elif got[:len(marker)] == marker:
            start = len(marker)
        cut = _find(got, marker, start)
        got = got[start:cut if cut >= 0 else None]
    ref = set(_answer_items(answer))
    drop = (CONNECTIVES | set(prefix) | set(items(ignore))) - ref
    return [x for x in got if x not in drop]


def _multiset_overlap(p: list[str], a: list[str]) -> int:
    return sum((Counter(p) & Counter(a)).values())


def exact(parsed: list[str], ref: list[str], ordered: bool = False) -> float:
    """1.0 iff the parsed items equal the reference items (as multisets unless ``ordered``)."""
    return float(parsed == ref if ordered else Counter(parsed) == Counter(ref))


def set_f1(parsed: list[str], ref: list[str]) -> float:
    """F1 between multisets of items (duplicates count against precision)."""
    if not parsed or not ref:
        return float(parsed == ref)
    tp = _multiset_overlap(parsed, ref)
    return 0.0 if tp == 0 else 2 * tp / (len(parsed) + len(ref))


def set_iou(parsed: list[str], ref: list[str]) -> float:
    """Multiset intersection over union of items."""
    if not parsed and not ref:
        return 1.0
    inter = _multiset_overlap(parsed, ref)
    return inter / (len(parsed) + len(ref) - inter)


def list_accuracy(parsed: list[str], ref: list[str]) -> float:
    """Positions right, divided by max(len(ref), len(parsed))."""
    if not ref:
        return float(not parsed)
    return sum(1 for i, x in enumerate(ref) if i < len(parsed) and parsed[i] == x) / max(len(ref), len(parsed))


_FUNCS: dict[str, Callable[[list[str], list[str]], float]] = {
    "exact": exact, "set_f1": set_f1, "set_iou": set_iou, "list_accuracy": list_accuracy}


@dataclass(frozen=True)
class Scorer:
    """A picklable ``prediction -> score`` callable bound to one answer and one metric.

    metric: one of ``METRICS``. answer: the reference (a string or a tuple of strings).
    answer_prefix / question: the prompt's answer prefix and question (see :func:`parse_items`).
    """

    metric: str
    answer: str | tuple[str, ...]
    answer_prefix: str = ""
    question: str = ""

    def __post_init__(self) -> None:
        if self.metric not in _FUNCS:
            raise ValueError(f"metric: unknown metric {self.metric!r}; available: {', '.join(METRICS)}")

    def parse(self, prediction: str) -> list[str]:
        """The answer items of ``prediction`` (see :func:`parse_items`)."""
        if not isinstance(prediction, str):
            raise TypeError(f"prediction: expected str, got {type(prediction).__name__}")
        return parse_items(prediction, self.answer, answer_prefix=self.answer_prefix, ignore=self.question)

    def scores(self, prediction: str) -> dict[str, float]:
        """{"score": partial credit by the metric, "exact": all-or-nothing}, both in [0, 1]."""
        parsed, ref = self.parse(prediction), _answer_items(self.answer)
        ex = exact(parsed, ref, ordered=self.metric == "list_accuracy")
        return {"score": ex if self.metric == "exact" else _FUNCS[self.metric](parsed, ref), "exact": ex}

    def exact(self, prediction: str) -> float:
        """All-or-nothing score of ``prediction``."""
        return self.scores(prediction)["exact"]

    def __call__(self, prediction: str) -> float:
        """Partial-credit score of ``prediction`` by the metric."""
        return self.scores(prediction)["score"]
