"""Real text that every machine has: the Python standard library's source files.

The files are read at run time from the running interpreter's stdlib directory
(``sysconfig.get_paths()["stdlib"]``), so nothing is downloaded. Their content depends
on the Python version, so haystacks (and a retrained tokenizer) are reproducible per
interpreter version, not across versions.

Files are split deterministically by a CRC-32 of their relative path:

- ``CHECK_FILES`` are held out of everything (tokenizer training, language-model
  training, haystacks); the tokenizer tests measure round trips and compression on them.
- ``"eval"``: about one file in ten; haystacks for evaluation come from here, so a model
  trained on the ``"train"`` split is evaluated on text it has not seen.
- ``"train"``: the rest; language-model training text and training haystacks.
"""
from __future__ import annotations

import functools
import os
import sysconfig
import zlib
from pathlib import Path

#: Held out of tokenizer training, model training and haystacks; used by the tokenizer tests.
CHECK_FILES: tuple[str, ...] = ("textwrap.py", "fractions.py", "heapq.py", "calendar.py", "json/encoder.py")

# Directories left out: installed packages (machine-specific), the test suites (absent from
# many distributions' Python and full of deliberately odd files) and the codec tables.
_EXCLUDED_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test", "encodings",
                            "__pycache__", "lib-dynload"})
_EXCLUDED_PREFIXES = ("_sysconfigdata", "config-")
SPLITS = ("train", "eval", "all")
_MAX_LINE_CHARS = 100


def stdlib_dir() -> Path:
    """The running interpreter's standard-library directory."""
    return Path(sysconfig.get_paths()["stdlib"])


def _split_of(rel: str) -> str:
    return "eval" if zlib.crc32(rel.encode()) % 10 == 0 else "train"


@functools.lru_cache(maxsize=None)
def stdlib_files(split: str = "all") -> tuple[str, ...]:
    """Relative POSIX paths of the usable stdlib ``.py`` files of ``split``, sorted.

    ``split``: "train", "eval" or "all" ("all" = train + eval; ``CHECK_FILES`` are never included).
    Only files that decode as UTF-8 are listed.
    """
    if split not in SPLITS:
        raise ValueError(f"split: must be one of {', '.join(SPLITS)}, got {split!r}")
    root = stdlib_dir()
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in _EXCLUDED_DIRS and not d.startswith(_EXCLUDED_PREFIXES)]
        for fn in filenames:
            if not fn.endswith(".py") or fn.startswith(_EXCLUDED_PREFIXES):
                continue
            p = Path(dirpath) / fn
            r = p.relative_to(root).as_posix()
            if r in CHECK_FILES or (split != "all" and _split_of(r) != split):
                continue
            try:
                p.read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue
            out.append(r)
    if not out:
        raise RuntimeError(f"no usable standard-library source files found under {root}")
    return tuple(sorted(out))


def read_stdlib(rel: str) -> str:
    """Text of one stdlib file given its relative path."""
    return (stdlib_dir() / rel).read_text(encoding="utf-8")


def check_file_paths() -> list[Path]:
    """Absolute paths of the held-out ``CHECK_FILES`` present in this interpreter."""
    root = stdlib_dir()
    return [root / r for r in CHECK_FILES if (root / r).is_file()]


@functools.lru_cache(maxsize=4)
def haystack_lines(split: str = "eval") -> tuple[str, ...]:
    """All lines of the split's files in file order, right-stripped, one blank line between files.

    Runs of blank lines are collapsed and lines longer than 100 characters (data tables)
    are dropped, so every line is a small filler unit.
    """
    lines: list[str] = []
    for rel in stdlib_files(split):
        prev_blank = True
        for line in read_stdlib(rel).splitlines():
            line = line.rstrip()
            if len(line) > _MAX_LINE_CHARS:
                continue
            if not line:
                if prev_blank:
                    continue
                prev_blank = True
            else:
                prev_blank = False
            lines.append(line)
        if not prev_blank:
            lines.append("")
    return tuple(lines)
