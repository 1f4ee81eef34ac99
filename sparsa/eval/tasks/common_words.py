"""Common-word extraction: aggregate word frequencies over the whole context."""
from __future__ import annotations

import random
from dataclasses import dataclass

from .base import Task
from .words import distinct_pseudowords

HEADER = "Below is a numbered list of words. Some words occur much more often than the others.\n\n"

TEMPLATES = (HEADER, "Question: What are the most common words in the list above?", "Answer:")


@dataclass
class CommonWords(Task):
    """A long numbered list of words where ``common`` words recur far more than the rest.

    Tests: aggregation over the whole context; no single position holds the answer, so a
    method that drops most of the context loses the counts. Each common word occurs at least
    ``rare_max + 2`` times and about ``share / common`` of the entries; every other word occurs
    1 to ``rare_max`` times. Answer: the common words in order of first appearance. Metric: set F1.
    """

    name = "common_words"
    description = "Name the most frequent words of a long word list (aggregation over the context; set F1)."
    metric = "set_f1"
    min_length = 256
    common: int = 5
    rare_max: int = 3
    share: float = 0.3

    def max_new_tokens(self, length: int) -> int:
        return 6 * self.common + 8

    def _build(self, rng, fitter, split):
        length = fitter.length
        if self.common < 1 or self.rare_max < 1 or not 0 < self.share < 1:
            raise ValueError("common/rare_max/share: need common >= 1, rare_max >= 1 and 0 < share < 1")
        words = distinct_pseudowords(rng, self.common + length // 2)
        common, rare = words[:self.common], words[self.common:]
        freqs = [rng.randint(1, self.rare_max) for _ in rare]
        shuffle_seed = rng.random()
        min_each = self.rare_max + 2

        def entries(n: int) -> list[str]:
            each = max(min_each, round(self.share * n / self.common))
            out = [w for w in common for _ in range(each)]
            i = 0
            while len(out) < n and i < len(rare):
                out.extend([rare[i]] * min(freqs[i], n - len(out)))
                i += 1
            random.Random(f"{shuffle_seed}|{n}").shuffle(out)
            return out

        def build(n: int) -> str:
            return HEADER + "\n".join(f"{i}. {w}" for i, w in enumerate(entries(n), 1))

        parts, n = fitter.fit(build, f"What are the {self.common} most common words in the list above?",
                              f"The {self.common} most common words in the list are")
        listed = entries(n)
        first = {w: listed.index(w) for w in common}
        return parts, sorted(common, key=first.__getitem__), {"common_count": listed.count(common[0])}
