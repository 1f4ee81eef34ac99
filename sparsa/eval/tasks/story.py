"""Tasks on a generated multi-chapter narrative.

Every chapter carries a few fact sentences among filler narration:

- a hiding: "<person> hid the <object> in the <spot>." (the same object is hidden in several chapters);
- a purchase: "<person> bought a <material> <object> from a trader." (each item bought once);
- a home: "<person> has lived in <Town> since childhood." (each buyer's home stated once, elsewhere);
- an evening letter: "That evening a letter arrived for <name>." (in all chapters but a few).

Filler narration never uses the fact verbs, so each answer is determined by the prompt.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

from .base import Fitter, Parts, Task
from .words import FIRST_NAMES, MATERIALS, OBJECTS, PLACES, SCENERY, SPOTS, SURNAMES, town_names

_MAX_CHAPTERS = 1000  # purchases need distinct (material, object) items: 20 x 52 of them
HEADER = "Read the story below. A question about it follows the story.\n\n"

_FILLER = (
    "{a} walked along {place} while {scenery} settled over {town}.",
    "{a} and {b} talked for a long time about the coming harvest.",
    "Nobody in {town} could remember a stranger season.",
    "{a} stopped at {place} to watch {scenery} roll in.",
    "For a while {a} said nothing, and {b} did not ask.",
    "The bells of {town} rang twice before noon.",
    "{a} laughed at something {b} said and the mood lifted.",
    "Later {a} sat by the fire and mended an old coat.",
    "The road to {town} was muddy, and the cart moved slowly.",
    "{b} kept a careful eye on the sky as {scenery} thickened.",
    "Children ran across {place}, shouting names nobody answered to.",
    "{a} wrote a few lines in a diary and then put it away.",
    "At {place} the baker was already closing the shutters.",
    "{a} remembered an old song and hummed it on the way home.",
    "A cart full of apples rattled past {place}.",
    "{b} counted the coins twice and frowned both times.",
    "Somewhere beyond {town} a dog barked into {scenery}.",
    "{a} promised {b} to come back before the end of the week.",
    "The innkeeper told {a} the same story as every night.",
    "By dusk {scenery} had reached {place}, and the lamps were lit.",
    "{a} fed the goats and swept the yard.",
    "{b} waved from the window, but {a} did not see it.",
)

TEMPLATES = (HEADER, "Chapter", "hid the in the.", "bought a an from a trader.", "has lived in since childhood.",
             "That evening a letter arrived for.", "Question: In chapter, where was the hidden?",
             "Question: In which town does the person who bought the live?",
             "Question: In which chapters did no letter arrive? Answer with the chapter numbers.",
             "Answer:") + _FILLER


@dataclass
class _Chapter:
    number: int
    facts: list[str] = field(default_factory=list)
    fact_pos: list[float] = field(default_factory=list)


@dataclass
class _Story:
    chapters: list[_Chapter]
    towns: list[str]
    hide: list[tuple[str, str, str]]        # per chapter: (person, object, spot)
    buy: list[tuple[str, str, str]]         # per chapter: (person, material, object)
    home_of: dict[str, str]                 # person -> town
    no_letter: list[int]                    # chapter numbers without a letter


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _make_story(rng: random.Random, n_ch: int) -> _Story:
    """Facts of an ``n_ch``-chapter story (filler is added by the length fitter)."""
    towns = town_names(rng, max(4, min(16, n_ch // 2 + 3)))
    full = [f"{f} {s}" for f in FIRST_NAMES for s in SURNAMES]
    people = rng.sample(full, n_ch)
    items = rng.sample([(m, o) for m in MATERIALS for o in OBJECTS], n_ch)
    buy = [(people[i], items[i][0], items[i][1]) for i in range(n_ch)]
    # each buyer's home is told once, in a chapter other than the purchase (when possible)
    order = list(range(n_ch))
    rng.shuffle(order)
    if n_ch > 1:
        for i in range(n_ch):
            if order[i] == i:
                j = (i + 1) % n_ch
                order[i], order[j] = order[j], order[i]
    home_of = {p: rng.choice(towns) for p in people}
    homes = [people[order[i]] for i in range(n_ch)]
    hide = [(rng.choice(people), rng.choice(OBJECTS), rng.choice(SPOTS)) for _ in range(n_ch)]
    n_missing = rng.randint(1, max(1, min(3, n_ch - 1)))
    no_letter = sorted(rng.sample(range(1, n_ch + 1), n_missing))
    chapters = []
    for i in range(n_ch):
        ch = _Chapter(i + 1)
        ch.facts.append(f"{hide[i][0]} hid the {hide[i][1]} in the {hide[i][2]}.")
        ch.facts.append(f"{buy[i][0]} bought {_article(buy[i][1])} {buy[i][1]} {buy[i][2]} from a trader.")
        ch.facts.append(f"{homes[i]} has lived in {home_of[homes[i]]} since childhood.")
        if i + 1 not in no_letter:
            ch.facts.append(f"That evening a letter arrived for {rng.choice(people).split()[0]}.")
        rng.shuffle(ch.facts)
        ch.fact_pos = sorted(rng.random() for _ in ch.facts)
        chapters.append(ch)
    return _Story(chapters, towns, hide, buy, home_of, no_letter)


def _filler(rng: random.Random, towns: list[str]) -> str:
    a, b = rng.sample(FIRST_NAMES, 2)
    return rng.choice(_FILLER).format(a=a, b=b, town=rng.choice(towns), place=rng.choice(PLACES),
                                      scenery=rng.choice(SCENERY))


def _render(story: _Story, filler: list[str]) -> str:
    """The story text with ``filler`` sentences dealt round-robin over the chapters."""
    n_ch = len(story.chapters)
    per: list[list[str]] = [[] for _ in range(n_ch)]
    for i, s in enumerate(filler):
        per[i % n_ch].append(s)
    parts = []
    for ch, fill in zip(story.chapters, per):
        sents = list(fill)
        for pos, fact in sorted(zip(ch.fact_pos, ch.facts), reverse=True):
            sents.insert(round(pos * len(fill)), fact)
        parts.append(f"Chapter {ch.number}\n" + " ".join(sents))
    return "\n\n".join(parts)


def _fit_story(rng: random.Random, fitter: Fitter, question) -> tuple[Parts, _Story, tuple]:
    """Choose the chapter count (facts take about 40% of the context), then fill with narration.

    question(story, rng) -> (question, answer prefix, answer, extra).
    """
    length = fitter.length
    n_ch = max(3, min(_MAX_CHAPTERS, round(0.4 * length / 60)))
    filler_rng_seed = rng.random()
    while True:
        story = _make_story(random.Random(f"{filler_rng_seed}|{n_ch}"), n_ch)
        q = question(story, random.Random(f"{filler_rng_seed}|q|{n_ch}"))
        if fitter.count(HEADER + _render(story, []), q[0], q[1]) <= 0.8 * length or n_ch == 3:
            break
        n_ch = max(3, int(n_ch * 0.8))
    frng = random.Random(f"{filler_rng_seed}|filler")
    towns = story.towns
    pool: list[str] = []

    def build(n: int) -> str:
        while len(pool) < n:
            pool.append(_filler(frng, towns))
        return HEADER + _render(story, pool[:n])

    parts, _ = fitter.fit(build, q[0], q[1])
    return parts, story, q


@dataclass
class StoryRetrieval(Task):
    """Retrieve one chapter's fact: where an object was hidden in a given chapter.

    Tests: locating a chapter and reading a fact in it; the same object is hidden elsewhere in
    other chapters, so the chapter number matters. Metric: exact match.
    """

    name = "story_retrieval"
    description = "Where was an object hidden in a given chapter of a long story (exact match)."
    metric = "exact"
    min_length = 512

    def _build(self, rng, fitter, split):
        def question(story: _Story, qrng: random.Random):
            n = len(story.chapters)
            k = qrng.randrange(n)
            obj = story.hide[k][1]
            # make the same object appear hidden elsewhere, at another spot, as a distractor
            others = [i for i in range(n) if i != k]
            for i in qrng.sample(others, min(2, len(others))):
                spot = qrng.choice([s for s in SPOTS if s != story.hide[k][2]])
                person = story.hide[i][0]
                story.hide[i] = (person, obj, spot)
                facts = story.chapters[i].facts
                for j, f in enumerate(facts):
                    if " hid the " in f:
                        facts[j] = f"{person} hid the {obj} in the {spot}."
            return (f"In chapter {k + 1}, where was the {obj} hidden?",
                    f"In chapter {k + 1}, the {obj} was hidden in the", story.hide[k][2], k + 1)

        parts, story, q = _fit_story(rng, fitter, question)
        return parts, q[2], {"chapter": q[3], "chapters": len(story.chapters)}


@dataclass
class StoryMultiHop(Task):
    """Two hops across chapters: who bought an item (one chapter), where that person lives (another).

    Tests: composing two facts stated far apart; other people bought look-alike items
    (same object, other material). Metric: exact match.
    """

    name = "story_multihop"
    description = "Where does the buyer of an item live: two facts in different chapters (exact match)."
    metric = "exact"
    min_length = 512

    def _build(self, rng, fitter, split):
        def question(story: _Story, qrng: random.Random):
            k = qrng.randrange(len(story.chapters))
            person, material, obj = story.buy[k]
            return (f"In which town does the person who bought the {material} {obj} live?",
                    f"The person who bought the {material} {obj} lives in", story.home_of[person], person)

        parts, story, q = _fit_story(rng, fitter, question)
        return parts, q[2], {"buyer": q[3], "chapters": len(story.chapters)}


@dataclass
class StoryFilter(Task):
    """Filtering: which chapters lack the evening letter that all the others have.

    Tests: checking every chapter for an event and reporting the absences, which needs the
    whole context. Answer: chapter numbers in increasing order. Metric: set IoU.
    """

    name = "story_filter"
    description = "List the chapters in which no letter arrived (filtering over the whole story; set IoU)."
    metric = "set_iou"
    min_length = 512

    def max_new_tokens(self, length: int) -> int:
        return 24

    def _build(self, rng, fitter, split):
        def question(story: _Story, qrng: random.Random):
            return ("In which chapters did no letter arrive? Answer with the chapter numbers.",
                    "No letter arrived in chapters", [str(c) for c in story.no_letter], None)

        parts, story, q = _fit_story(rng, fitter, question)
        return parts, q[2], {"chapters": len(story.chapters)}
