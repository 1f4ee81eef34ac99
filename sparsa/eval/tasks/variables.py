"""Variable tracking: follow chains of assignments through a long context."""
from __future__ import annotations

import random
import string
from dataclasses import dataclass

from .base import LineHaystack, Task, insert_at_depths

HEADER = ("The text below hides lines that assign values to variables, each variable written as VAR and "
          "five capital letters. A question about them follows the text.\n\n")
ARROW_HEADER = HEADER.replace("\n\n", " A line X -> VAR NAME stores X, a number or another variable, in the "
                              "variable NAME.\n\n")
# notation -> (header, first line of a chain, each later line)
NOTATIONS = {"arrow": (ARROW_HEADER, "{value} -> VAR {name}", "VAR {prev} -> VAR {name}"),
             "equals": (HEADER, "VAR {name} = {value}", "VAR {name} = VAR {prev}")}

TEMPLATES = (ARROW_HEADER, "VAR = VAR", "-> VAR", "Question: In order of assignment, which variables are assigned, "
             "directly or through other variables, the value?", "Answer:")


def _names(rng: random.Random, n: int) -> list[str]:
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < n:
        s = "".join(rng.choice(string.ascii_uppercase) for _ in range(5))
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out


@dataclass
class VariableTracking(Task):
    """Chains of assignments ("12345 -> VAR A", "VAR A -> VAR B", ...) hidden in source code.

    Tests: multi-hop tracing: each variable of the target chain is found only by following
    the previous one. ``chains`` chains (one asked about, the rest distractors with other
    values), each ``hops`` re-assignments long, placed in order at random depths.
    Answer: the target chain's variables in order of assignment. Metric: set IoU.

    ``notation``: "arrow" (default) writes an assignment value first, "12345 -> VAR A" and
    "VAR A -> VAR B" (R's ``->``), so every hop is a lookup of what follows a known token;
    "equals" writes it as RULER does, "VAR A = 12345" and "VAR B = VAR A", where each hop is
    a reverse lookup (which line ends with the known value). Small models trained from scratch
    find reverse lookups hard: sparsa-tiny's architecture stayed at chance on the equals form,
    even at one hop, in every recipe tried, and learnt the same lookup written value first.
    """

    name = "variable_tracking"
    description = ("Chains of variable assignments (several hops) among distractor chains; list every "
                   "variable holding the asked value (set IoU).")
    metric = "set_iou"
    min_length = 256
    chains: int = 2
    hops: int = 4
    notation: str = "arrow"

    def max_new_tokens(self, length: int) -> int:
        # room for a chat model's list, one "- VAR ABCDE -> VAR FGHIJ" line per name
        return 12 * (self.hops + 1) + 16

    def _build(self, rng, fitter, split):
        if self.chains < 1 or self.hops < 0:
            raise ValueError(f"chains/hops: need chains >= 1 and hops >= 0, got {self.chains}, {self.hops}")
        if self.notation not in NOTATIONS:
            raise ValueError(f"notation: need one of {tuple(NOTATIONS)}, got {self.notation!r}")
        head, first, later = NOTATIONS[self.notation]
        names = _names(rng, self.chains * (self.hops + 1))
        values = [str(v) for v in rng.sample(range(10_000, 100_000), self.chains)]
        inserts: list[tuple[float, str]] = []
        chains = []
        for c in range(self.chains):
            chain = names[c * (self.hops + 1):(c + 1) * (self.hops + 1)]
            chains.append(chain)
            depths = sorted(rng.random() for _ in chain)
            lines = [first.format(value=values[c], name=chain[0])]
            lines += [later.format(prev=a, name=b) for a, b in zip(chain, chain[1:])]
            inserts.extend(zip(depths, lines))
        inserts.sort(key=lambda x: x[0])
        hay = LineHaystack(rng, split)
        # the value ends the question, right before the answer, as a needle's key does
        q = (f"In order of assignment, which variables are assigned, directly or through other "
             f"variables, the value {values[0]}?")

        def build(n: int) -> str:
            return head + "\n".join(insert_at_depths(hay.take(n), inserts))

        parts, _ = fitter.fit(build, q, f"In order of assignment, the variables assigned the value {values[0]} are")
        return parts, chains[0], {"value": values[0]}
