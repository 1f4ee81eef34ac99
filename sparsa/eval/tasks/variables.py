"""Variable tracking: follow chains of assignments through a long context."""
from __future__ import annotations

import random
import string
from dataclasses import dataclass

from .base import LineHaystack, Task, fit_to_length, insert_at_depths

HEADER = ("The text below hides lines that assign values to variables, each variable written as VAR and "
          "five capital letters. A question about them follows the text.\n\n")


TEMPLATES = (HEADER, "VAR = VAR", "Question: In order of assignment, which variables are assigned, directly or "
             "through other variables, the value?", "Answer:")


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
    """Chains of assignments ("VAR A = 12345", "VAR B = VAR A", ...) hidden in source code.

    Tests: multi-hop tracing: each variable of the target chain is found only by following
    the previous one. ``chains`` chains (one asked about, the rest distractors with other
    values), each ``hops`` re-assignments long, placed in order at random depths.
    Answer: the target chain's variables in order of assignment. Metric: set IoU.

    ``name_echo`` (training only, 0 in evaluation): the probability that an assignment line
    repeats its variable's name after the right-hand side ("VAR B = VAR A B"). Predicting the
    echo teaches the model to carry a line's name at its value's tokens, the half of the
    value -> name lookup that the answer loss alone gives no gradient to.
    """

    name = "variable_tracking"
    description = ("Chains of variable assignments (several hops) among distractor chains; list every "
                   "variable holding the asked value (set IoU).")
    metric = "set_iou"
    min_length = 256
    chains: int = 2
    hops: int = 4
    name_echo: float = 0.0

    def max_new_tokens(self, length: int) -> int:
        return 6 * (self.hops + 1) + 8

    def _build(self, rng, counter, length, split):
        if self.chains < 1 or self.hops < 0:
            raise ValueError(f"chains/hops: need chains >= 1 and hops >= 0, got {self.chains}, {self.hops}")
        if not 0.0 <= self.name_echo <= 1.0:
            raise ValueError(f"name_echo: need a probability in [0, 1], got {self.name_echo}")
        names = _names(rng, self.chains * (self.hops + 1))
        values = [str(v) for v in rng.sample(range(10_000, 100_000), self.chains)]
        inserts: list[tuple[float, str]] = []
        chains = []
        for c in range(self.chains):
            chain = names[c * (self.hops + 1):(c + 1) * (self.hops + 1)]
            chains.append(chain)
            depths = sorted(rng.random() for _ in chain)
            lines = [f"VAR {chain[0]} = {values[c]}"] + [f"VAR {b} = VAR {a}" for a, b in zip(chain, chain[1:])]
            if self.name_echo > 0:
                lines = [f"{line} {name}" if rng.random() < self.name_echo else line
                         for line, name in zip(lines, chain)]
            inserts.extend(zip(depths, lines))
        inserts.sort(key=lambda x: x[0])
        hay = LineHaystack(rng, split)
        # the value ends the question, right before "Answer:" (as a needle's key does): a small
        # model did not learn to carry it over the dozen tokens of an instruction after it
        q = (f"Question: In order of assignment, which variables are assigned, directly or through other "
             f"variables, the value {values[0]}?\nAnswer:")

        def build(n: int) -> str:
            return HEADER + "\n".join(insert_at_depths(hay.take(n), inserts)) + "\n\n" + q

        prompt, _ = fit_to_length(build, counter, length, self.name)
        return prompt, chains[0], {"value": values[0]}
