"""Train sparsa's byte-level BPE tokenizer on the Python standard library's source.

Next to ``tokenizer.json`` it writes ``tokenizer.meta.json``: the Python version and the list of
files it was trained on, since another Python version has other stdlib sources, and the
supplement's word list, since the task texts it is drawn from may change later.

The training text is every usable stdlib ``.py`` file (``sparsa.eval.api.stdlib_files("all")``,
which leaves out ``corpus.CHECK_FILES``, kept for the tokenizer tests) in sorted path order,
plus a small supplement that makes the task vocabulary compact: every 1-3 digit group
(numbers are pre-split into groups of at most three digits, so a 7-digit number is always 3
tokens plus its leading space) and the task word lists with and without a leading space.

The tokenizer is byte-level: any text, in any script, encodes and decodes back unchanged.
Special tokens: ``<|pad|>`` (0), ``<|bos|>`` (1, added in front of every encoding by the
post-processor), ``<|eos|>`` (2).

Usage::

    python -m sparsa.train.tokenizer --out sparsa/assets/tokenizer.json --vocab-size 8192
"""
from __future__ import annotations

import argparse
import hashlib
import json
import platform
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

PAD, BOS, EOS = "<|pad|>", "<|bos|>", "<|eos|>"
SPECIAL_TOKENS = (PAD, BOS, EOS)

# Pre-tokenization: English contractions; words with an optional leading space; runs of
# punctuation with an optional leading space; digits in groups of at most three (no leading
# space, so a number's groups do not depend on what precedes it); whitespace runs, where a run
# before a word leaves its last space to that word (so indentation becomes its own tokens).
SPLIT_PATTERN = (r"'(?:s|t|re|ve|m|ll|d)(?!\p{L})"
                 r"| ?\p{L}+"
                 r"| ?[^\s\p{L}\p{N}]+"
                 r"|\p{N}{1,3}"
                 r"|\s+(?!\S)"
                 r"|\s+")

_DIGIT_REPEATS = 400
_WORD_REPEATS = 150


def supplement_words() -> list[str]:
    """The words of the supplement: the task word lists and the task templates' words."""
    from ..eval.api import all_vocabulary

    return sorted(set(all_vocabulary()) | set(template_words()))


def supplement_lines(words: Sequence[str]) -> Iterator[str]:
    """The task-vocabulary supplement over ``words`` (:func:`supplement_words`, or a tokenizer's
    recorded list), one line at a time (deterministic)."""
    groups = [str(i) for i in range(10)] + [f"{i:02d}" for i in range(100)] + [f"{i:03d}" for i in range(1000)]
    line = " ".join(groups)
    for _ in range(_DIGIT_REPEATS):
        yield line
    words = list(words)
    line = " ".join(words + [w.capitalize() for w in words]) + "\n" + "\n".join(words)
    for _ in range(_WORD_REPEATS):
        yield line


def template_words() -> list[str]:
    """Words of the task templates (questions, headers, fact sentences, filler narration)."""
    from ..eval.api import task_templates

    out: set[str] = set()
    for t in task_templates():
        out.update(re.findall(r"[A-Za-z]+", re.sub(r"\{[a-z_0-9]+\}", " ", t)))
    return sorted(out)


def training_texts(files: Sequence[str] | None, supplement: bool, words: Sequence[str]) -> Iterator[str]:
    """Texts the tokenizer is trained on: stdlib files (sorted relative paths) then the supplement."""
    from ..eval.api import read_stdlib, stdlib_files

    for rel in (stdlib_files("all") if files is None else files):
        yield read_stdlib(rel)
    if supplement:
        yield from supplement_lines(words)


def build_empty_tokenizer():
    """An untrained BPE tokenizer with sparsa's pre-tokenizer and decoder (no normaliser: bytes stay as they are)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    return tok


def train_tokenizer(vocab_size: int = 8192, files: Sequence[str] | None = None, supplement: bool = True,
                    out: str | Path | None = None, words: Sequence[str] | None = None):
    """Train the byte-level BPE tokenizer; returns a ``tokenizers.Tokenizer`` (and saves it to ``out``).

    vocab_size: total vocabulary including the 256 byte tokens and the 3 special tokens.
    files: stdlib relative paths to train on (default: all usable files except ``CHECK_FILES``).
    words: the supplement's words (default: :func:`supplement_words`; a tokenizer's meta file
        records the ones it was trained with).
    """
    from tokenizers import pre_tokenizers, processors, trainers

    from ..eval.api import stdlib_files

    if not isinstance(vocab_size, int) or vocab_size < 512:
        raise ValueError(f"vocab_size: must be an int >= 512, got {vocab_size!r}")
    tok = build_empty_tokenizer()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=False,
                                  special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    words = supplement_words() if words is None else sorted(words)
    tok.train_from_iterator(training_texts(files, supplement, words), trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B",
                                                       special_tokens=[(BOS, bos_id)])
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        tok.save(str(out))
        if files is None and supplement:
            meta = {"python": platform.python_version(), "vocab_size": vocab_size,
                    "files": len(stdlib_files("all")),
                    "files_sha256": hashlib.sha256("\n".join(stdlib_files("all")).encode()).hexdigest(),
                    "supplement_words": words}
            Path(out).with_name(Path(out).stem + ".meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return tok


def tokenizer_stats(tok, paths: Sequence[str | Path]) -> dict[str, float]:
    """Vocabulary size and tokens per KB (1000 bytes, UTF-8) over the given files."""
    n_bytes = n_tok = 0
    for p in paths:
        text = Path(p).read_text(encoding="utf-8")
        n_bytes += len(text.encode())
        n_tok += len(tok.encode(text, add_special_tokens=False).ids)
    return {"vocab_size": tok.get_vocab_size(), "bytes": n_bytes, "tokens": n_tok,
            "tokens_per_kb": 1000.0 * n_tok / max(n_bytes, 1)}


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="Where to write tokenizer.json.")
    ap.add_argument("--vocab-size", type=int, default=8192)
    args = ap.parse_args(argv)
    tok = train_tokenizer(args.vocab_size, out=args.out)
    from ..eval.api import check_file_paths

    print(tokenizer_stats(tok, check_file_paths()))


if __name__ == "__main__":  # pragma: no cover
    main()
