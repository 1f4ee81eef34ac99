"""Word lists and word makers shared by the task generators.

All lists are plain lowercase (names and towns capitalised) single words, so an answer is
one word and scorers can compare word sets. Pseudowords are pronounceable letter strings
built from syllables; they give as many distinct words as a long context needs.
"""
from __future__ import annotations

import random

ADJECTIVES = (
    "amber", "ancient", "autumn", "bitter", "blue", "bold", "brave", "bright", "broken", "calm", "clever",
    "cold", "crimson", "curly", "dark", "deep", "dry", "dusty", "eager", "early", "empty", "faint", "fancy",
    "fierce", "flat", "fresh", "gentle", "giant", "golden", "grand", "green", "grey", "happy", "hidden",
    "hollow", "humble", "icy", "jolly", "kind", "late", "lazy", "little", "lively", "lonely", "loud", "lucky",
    "misty", "narrow", "noble", "odd", "pale", "plain", "polite", "proud", "quick", "quiet", "rapid", "rare",
    "rough", "round", "royal", "rusty", "sandy", "sharp", "shiny", "silent", "silver", "simple", "sleepy",
    "slow", "small", "smooth", "soft", "solid", "steady", "stormy", "strange", "sunny", "swift", "tall",
    "tame", "tiny", "velvet", "vivid", "warm", "wild", "windy", "wise", "young",
)

NOUNS = (
    "anchor", "apple", "arrow", "badger", "banner", "barn", "beacon", "bear", "bell", "birch", "boat", "bridge",
    "brook", "cabin", "canyon", "castle", "cedar", "cliff", "cloud", "comet", "coral", "crane", "creek",
    "crow", "desert", "dragon", "eagle", "ember", "falcon", "fern", "field", "forest", "fox", "garden",
    "glacier", "granite", "harbor", "hawk", "heron", "hill", "island", "ivy", "jungle", "lake", "lantern",
    "leaf", "lion", "maple", "meadow", "mill", "moon", "moss", "mountain", "oak", "ocean", "orchard", "otter",
    "owl", "panther", "pebble", "pine", "planet", "pond", "prairie", "quarry", "rabbit", "raven", "reef",
    "ridge", "river", "robin", "rocket", "sail", "shadow", "shore", "sparrow", "spring", "star", "stone",
    "storm", "summit", "thunder", "tiger", "tower", "valley", "violet", "wave", "willow", "wolf", "wren",
)

FIRST_NAMES = (
    "Ada", "Anton", "Bea", "Bram", "Cora", "Cyrus", "Dane", "Dora", "Edric", "Elsa", "Emil", "Fay", "Finn",
    "Gideon", "Greta", "Hana", "Hugo", "Igor", "Ilsa", "Ivo", "Jasper", "Juno", "Kai", "Kira", "Lena", "Leo",
    "Maeve", "Mara", "Milo", "Nell", "Nico", "Nora", "Olga", "Oren", "Otto", "Pavel", "Petra", "Pia", "Rafe",
    "Rhea", "Rosa", "Silas", "Sora", "Stellan", "Tamsin", "Theo", "Tilda", "Tobin", "Ulric", "Una", "Vera",
    "Viggo", "Willa", "Wren", "Yara", "Yusuf", "Zane", "Zora",
)

SURNAMES = (
    "Abbot", "Baker", "Barrow", "Brandt", "Carver", "Cole", "Dunn", "Ellis", "Fisher", "Fletcher", "Frost",
    "Garner", "Hale", "Harper", "Holt", "Keane", "Lark", "Marsh", "Mercer", "Miller", "Nash", "Oakes",
    "Porter", "Quinn", "Reed", "Rowe", "Sawyer", "Shaw", "Stone", "Tanner", "Thorne", "Vance", "Wade",
    "Walker", "Webb", "Wilde", "York",
)

OBJECTS = (
    "anchor", "basket", "bell", "blanket", "book", "bottle", "bowl", "box", "brush", "candle", "chain",
    "clock", "cloak", "coin", "compass", "crown", "cup", "dagger", "drum", "feather", "flute", "glove",
    "hammer", "helmet", "jar", "kettle", "key", "knife", "ladder", "lamp", "lantern", "ledger", "locket",
    "map", "medal", "mirror", "needle", "pipe", "quill", "ribbon", "ring", "rope", "saddle", "satchel",
    "scroll", "shell", "spoon", "telescope", "trumpet", "vase", "violin", "whistle",
)

MATERIALS = (
    "brass", "bronze", "copper", "glass", "golden", "iron", "ivory", "jade", "leather", "marble", "oaken",
    "painted", "pewter", "silver", "stone", "tin", "velvet", "wooden", "woolen", "clay",
)

SPOTS = (
    "attic", "barn", "bucket", "cellar", "chimney", "closet", "cupboard", "drawer", "fireplace", "garden",
    "hayloft", "kitchen", "mattress", "oven", "pantry", "shed", "stable", "stairwell", "trunk", "wardrobe",
    "well", "woodpile", "workshop", "orchard", "chapel", "boathouse", "greenhouse", "tower", "library",
    "mill",
)

TRADES = (
    "amber", "barley", "candles", "cheese", "cider", "clocks", "cloth", "coal", "copper", "cotton", "fish",
    "flax", "furs", "glass", "grain", "hats", "honey", "horses", "iron", "lace", "leather", "lumber", "marble",
    "olives", "paper", "pottery", "rope", "salt", "sheep", "silk", "silver", "soap", "spices", "tea", "tin",
    "tobacco", "wine", "wool",
)

LANDMARKS = (
    "abbey", "aqueduct", "archway", "bathhouse", "belfry", "bridge", "castle", "cathedral", "citadel",
    "colonnade", "fountain", "gatehouse", "granary", "harbor", "lighthouse", "library", "market", "mill",
    "monastery", "observatory", "obelisk", "palace", "pier", "windmill", "theater", "tower", "tannery",
    "vineyard", "watchtower", "wharf",
)

SCENERY = (
    "the rain", "the wind", "a thin fog", "the first snow", "a warm breeze", "the evening light",
    "a grey sky", "the morning mist", "the autumn leaves", "a quiet dusk", "the noon heat", "a cold drizzle",
)

PLACES = (
    "the market square", "the old road", "the river bank", "the north gate", "the village green",
    "the harbor wall", "the orchard path", "the mill pond", "the hill top", "the crossroads", "the churchyard",
    "the long meadow", "the stone bridge", "the bakery", "the inn", "the forge", "the ferry landing",
)

_ONSETS = ("b", "br", "c", "d", "dr", "f", "g", "gr", "h", "k", "l", "m", "n", "p", "r", "s", "st", "t", "tr",
           "v", "w", "z", "sh", "th")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ea", "ou")
_CODAS = ("", "", "n", "l", "r", "s", "m", "th", "nd", "rk")


def pseudoword(rng: random.Random, syllables: int | None = None) -> str:
    """A pronounceable lowercase nonsense word of 2-3 syllables."""
    n = syllables if syllables is not None else rng.choice((2, 2, 3))
    return "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(n))


def distinct_pseudowords(rng: random.Random, n: int, exclude: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """``n`` distinct pseudowords not in ``exclude``, in generation order."""
    out: list[str] = []
    seen = set(exclude)
    while len(out) < n:
        w = pseudoword(rng)
        if w not in seen:
            seen.add(w)
            out.append(w)
    return out


def town_names(rng: random.Random, n: int) -> list[str]:
    """``n`` distinct capitalised invented place names."""
    return [w.capitalize() for w in distinct_pseudowords(rng, n)]


def all_vocabulary() -> list[str]:
    """Every fixed word the tasks use (for tokenizer training and checks)."""
    words: list[str] = []
    for lst in (ADJECTIVES, NOUNS, FIRST_NAMES, SURNAMES, OBJECTS, MATERIALS, SPOTS, TRADES, LANDMARKS):
        words.extend(lst)
    for phrase in SCENERY + PLACES:
        words.extend(phrase.split())
    return sorted(set(words))
