"""One small interface over the tokenizers the tasks accept.

Accepted: a ``tokenizers.Tokenizer``, a HuggingFace ``PreTrainedTokenizerBase`` (fast or slow),
or any object with ``encode(text) -> list[int]`` and ``decode(ids) -> str``. Lengths are counted
without special tokens (a BOS the model adds in front is not part of the prompt's length).
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

# Every character the task templates use; a tokenizer must round-trip it.
TASK_CHARSET = ("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
                " .,:;?!'\"-=()\n")


class TokenCounter:
    """Counts, encodes and decodes text with any supported tokenizer (no special tokens)."""

    def __init__(self, tokenizer: Any):
        if isinstance(tokenizer, TokenCounter):
            tokenizer = tokenizer.tokenizer
        self.tokenizer = tokenizer
        t = type(tokenizer)
        mod = t.__module__ or ""
        if mod.startswith("tokenizers") and hasattr(tokenizer, "encode_batch"):
            self._kind = "tokenizers"
        elif hasattr(tokenizer, "batch_decode") and callable(tokenizer):
            self._kind = "hf"
        elif callable(getattr(tokenizer, "encode", None)) and callable(getattr(tokenizer, "decode", None)):
            self._kind = "generic"
        else:
            raise TypeError(f"tokenizer: expected a tokenizers.Tokenizer, a HuggingFace tokenizer or an object "
                            f"with encode/decode, got {t.__name__}")

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without special tokens."""
        if self._kind == "tokenizers":
            return self.tokenizer.encode(text, add_special_tokens=False).ids
        if self._kind == "hf":
            return list(self.tokenizer.encode(text, add_special_tokens=False))
        return list(self.tokenizer.encode(text))

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        if self._kind == "tokenizers":
            return [e.ids for e in self.tokenizer.encode_batch(list(texts), add_special_tokens=False)]
        if self._kind == "hf":
            return [list(x) for x in self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]]
        return [self.encode(t) for t in texts]

    def count(self, text: str) -> int:
        """Number of tokens of ``text`` (no special tokens)."""
        return len(self.encode(text))

    def decode(self, ids: Sequence[int]) -> str:
        if self._kind == "tokenizers":
            return self.tokenizer.decode(list(ids), skip_special_tokens=True)
        if self._kind == "hf":
            return self.tokenizer.decode(list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False)
        return self.tokenizer.decode(list(ids))

    def unk_id(self) -> int | None:
        if self._kind == "tokenizers":
            model = self.tokenizer.model
            unk = getattr(model, "unk_token", None)
            return self.tokenizer.token_to_id(unk) if unk else None
        return getattr(self.tokenizer, "unk_token_id", None)


def _squash(s: str) -> str:
    return re.sub(r"\s+", " ", s).strip()


def check_tokenizer(counter: TokenCounter, text: str, what: str = "task text") -> None:
    """Raise ``ValueError`` unless ``text`` encodes without unknown tokens and decodes back.

    Whitespace is compared loosely (some tokenizers normalise spaces).
    """
    ids = counter.encode(text)
    unk = counter.unk_id()
    if not ids or (unk is not None and unk in ids):
        bad = sorted({c for c in text if unk is not None and unk in counter.encode(c)})
        raise ValueError(f"tokenizer: cannot encode the {what} (unknown token for {''.join(bad)!r}); "
                         "the tasks need letters, digits and basic punctuation")
    back = counter.decode(ids)
    if _squash(back) != _squash(text):
        bad = sorted({c for c in text if _squash(counter.decode(counter.encode(c))) != _squash(c)})
        raise ValueError(f"tokenizer: does not round-trip the {what} (problem characters: {''.join(bad)!r}); "
                         "the tasks need letters, digits and basic punctuation")


def encode_for_model(tokenizer: Any, text: str) -> list[int]:
    """Token ids a model should see for ``text``: the tokenizer's own special tokens (e.g. BOS) included."""
    if isinstance(tokenizer, TokenCounter):
        tokenizer = tokenizer.tokenizer
    mod = type(tokenizer).__module__ or ""
    if mod.startswith("tokenizers") and hasattr(tokenizer, "encode_batch"):
        return tokenizer.encode(text).ids
    if hasattr(tokenizer, "batch_decode") and callable(tokenizer):
        return list(tokenizer(text)["input_ids"])
    return list(tokenizer.encode(text))


def special_ids(tokenizer: Any) -> dict[str, int | None]:
    """{"bos", "eos", "pad"} token ids of a tokenizer where it defines them (else None)."""
    if isinstance(tokenizer, TokenCounter):
        tokenizer = tokenizer.tokenizer
    mod = type(tokenizer).__module__ or ""
    if mod.startswith("tokenizers") and hasattr(tokenizer, "token_to_id"):
        get = tokenizer.token_to_id
        return {"bos": get("<|bos|>"), "eos": get("<|eos|>"), "pad": get("<|pad|>")}
    return {"bos": getattr(tokenizer, "bos_token_id", None), "eos": getattr(tokenizer, "eos_token_id", None),
            "pad": getattr(tokenizer, "pad_token_id", None)}
