"""Training sparsa's own small long-context model.

- ``tokenizer``: byte-level BPE trained on the Python standard library's source.
- ``config``: the recipe (dataclasses; TOML/JSON loading), e.g. ``recipes/sparsa-tiny.toml``.
- ``data``: the deterministic training stream (language modelling + task instances).
- ``loop``: AdamW + cosine schedule, bf16 autocast on CUDA, atomic checkpoints, exact resume.
- ``export`` / ``card``: the HuggingFace directory and its model card.
- ``run``: everything behind ``sparsa train --recipe R --out DIR [--resume]``.

Needs the ``eval`` extra (tokenizers) and the ``hf`` extra (transformers).
"""
from __future__ import annotations

from .config import TrainConfig, config_from_dict, load_recipe

__all__ = ["TrainConfig", "config_from_dict", "load_recipe"]
