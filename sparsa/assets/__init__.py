"""Files shipped inside the package: sparsa's tokenizer and its small default model.

- ``tokenizer.json``: byte-level BPE trained on the Python standard library
  (``sparsa.train.tokenizer``).
- ``sparsa-tiny/``: the default model, a HuggingFace directory (config.json,
  model.safetensors, tokenizer.json, README.md) trained by ``sparsa train`` with
  ``recipes/sparsa-tiny.toml``; present once it has been trained and added.
"""
from __future__ import annotations

from pathlib import Path

ASSETS_DIR = Path(__file__).resolve().parent
TOKENIZER_PATH = ASSETS_DIR / "tokenizer.json"
DEFAULT_MODEL_NAME = "sparsa-tiny"
DEFAULT_MODEL_DIR = ASSETS_DIR / DEFAULT_MODEL_NAME


def has_default_model() -> bool:
    """Whether the shipped default model is present in this installation."""
    return (DEFAULT_MODEL_DIR / "config.json").is_file() and (DEFAULT_MODEL_DIR / "model.safetensors").is_file()


def load_tokenizer(path: str | Path | None = None):
    """The shipped ``tokenizers.Tokenizer`` (or the one at ``path``)."""
    from tokenizers import Tokenizer

    p = Path(path) if path is not None else TOKENIZER_PATH
    if not p.is_file():
        raise FileNotFoundError(f"tokenizer: no tokenizer file at {p}")
    return Tokenizer.from_file(str(p))
