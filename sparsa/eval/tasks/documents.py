"""Document QA: one target document among shuffled look-alike distractor documents."""
from __future__ import annotations

import random
from dataclasses import dataclass

from .base import Task
from .words import ADJECTIVES, LANDMARKS, TRADES, town_names

HEADER = "Below are several documents, each about one town. A question about one of them follows.\n\n"

# (question, fact sentence); the fact never names the town, so the document boundary matters
_ATTRIBUTES = {
    "trade": ("what is the main trade of the town?", "Its main trade is {v}."),
    "river": ("on which river does the town lie?", "The town lies on the river {v}."),
    "year": ("in which year was the town founded?", "It was founded in the year {v}."),
    "landmark": ("what is the best known landmark of the town?", "Its best known landmark is the {v}."),
}
# answer prefix per attribute, given the town
_ANSWER_PREFIX = {
    "trade": "The main trade of {town} is",
    "river": "The town of {town} lies on the river",
    "year": "The town of {town} was founded in the year",
    "landmark": "The best known landmark of {town} is the",
}

_FILLER = (
    "Travellers describe its streets as {a} and {b}.",
    "In winter the roads to it are often closed by snow.",
    "A weekly fair draws people from the nearby villages.",
    "Most houses there are built of grey stone with steep roofs.",
    "The local dialect is hard for outsiders to follow.",
    "Its people are known for their {a} manners and long meals.",
    "A festival with music and lanterns is held there every spring.",
    "Two inns serve the travellers who pass through.",
    "The surrounding farms grow oats, beans and cabbages.",
    "Its council meets once a month in a hall near the square.",
    "Old maps show it as a much smaller place.",
    "A narrow lane climbs from the square to the upper houses.",
    "Visitors often mention the {a} light of its evenings.",
    "The school there has a single large classroom.",
    "Its market square is paved with {a} cobbles.",
    "Many of its families have lived there for generations.",
)

TEMPLATES = (HEADER, "Document: The town of", "Question: According to the document about the town of,",
             "Answer:") + tuple(q for q, _ in _ATTRIBUTES.values()) + tuple(f for _, f in _ATTRIBUTES.values()) \
    + _FILLER


def _attribute_values(rng: random.Random) -> dict[str, str]:
    return {"trade": rng.choice(TRADES), "river": town_names(rng, 1)[0],
            "year": str(rng.randint(1000, 1899)), "landmark": rng.choice(LANDMARKS)}


@dataclass
class DocumentQA(Task):
    """Towns described in separate documents, shuffled; one question about one town's document.

    Tests: finding the right document by its title and reading an attribute stated without
    the town's name ("Its main trade is salt."), while every distractor document states the
    same kinds of attributes. Metric: exact match.
    """

    name = "doc_qa"
    description = ("One target document among shuffled distractor documents; answer a question about "
                   "it (exact match).")
    metric = "exact"
    min_length = 256

    def _build(self, rng, fitter, split):
        length = fitter.length
        n_docs = max(2, round(0.5 * length / 70))
        seed = rng.random()
        while True:
            drng = random.Random(f"{seed}|{n_docs}")
            towns = town_names(drng, n_docs)
            docs = [_attribute_values(drng) for _ in towns]
            target = drng.randrange(n_docs)
            attr = drng.choice(sorted(_ATTRIBUTES))
            for d in docs:
                keys = sorted(_ATTRIBUTES)
                drng.shuffle(keys)
                d["_order"] = ",".join(keys)
            q = f"According to the document about the town of {towns[target]}, {_ATTRIBUTES[attr][0]}"
            prefix = _ANSWER_PREFIX[attr].format(town=towns[target])
            pool: list[str] = []
            frng = random.Random(f"{seed}|{n_docs}|filler")

            def build(n: int, towns=towns, docs=docs, pool=pool, frng=frng) -> str:
                while len(pool) < n:
                    a, b = frng.sample(ADJECTIVES, 2)
                    pool.append(frng.choice(_FILLER).format(a=a, b=b))
                per: list[list[str]] = [[] for _ in towns]
                for i, s in enumerate(pool[:n]):
                    per[i % len(towns)].append(s)
                parts = []
                for i, (town, d, fill) in enumerate(zip(towns, docs, per)):
                    facts = [_ATTRIBUTES[k][1].format(v=d[k]) for k in d["_order"].split(",")]
                    sents = [facts[0]] + fill[:len(fill) // 2] + facts[1:3] + fill[len(fill) // 2:] + facts[3:]
                    parts.append(f"Document {i + 1}: The town of {town}\n" + " ".join(sents))
                return HEADER + "\n\n".join(parts)

            if fitter.count(build(0), q, prefix) <= 0.8 * length or n_docs == 2:
                break
            n_docs = max(2, int(n_docs * 0.8))
        parts, _ = fitter.fit(build, q, prefix)
        return parts, docs[target][attr], {"document": target + 1, "attribute": attr, "documents": n_docs}
