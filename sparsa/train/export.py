"""Export a trained model to a HuggingFace directory that loads offline.

The directory holds config.json, model.safetensors (bf16), generation_config.json,
tokenizer.json + tokenizer_config.json, the recipe, and README.md (the model card).
"""
from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from .data import resolve_tokenizer_path

MAX_MODEL_BYTES = 25 * 1024 * 1024


def save_tokenizer(tokenizer_path: str | Path, out_dir: str | Path, model_max_length: int) -> None:
    """tokenizer.json plus the tokenizer_config.json that ``AutoTokenizer`` needs."""
    out = Path(out_dir)
    shutil.copyfile(tokenizer_path, out / "tokenizer.json")
    cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|bos|>", "eos_token": "<|eos|>",
           "pad_token": "<|pad|>", "model_max_length": model_max_length, "clean_up_tokenization_spaces": False,
           "add_bos_token": False, "padding_side": "left"}
    (out / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    special = {"bos_token": "<|bos|>", "eos_token": "<|eos|>", "pad_token": "<|pad|>"}
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")


def _compat_config(path: Path, rope_theta: float) -> None:
    """Write the RoPE base and dtype under both the old and the new transformers key names."""
    cfg = json.loads(path.read_text())
    cfg["rope_theta"] = rope_theta
    cfg.setdefault("rope_parameters", {"rope_type": "default", "rope_theta": rope_theta})
    cfg["dtype"] = cfg["torch_dtype"] = "bfloat16"
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def export_hf(model: Any, tokenizer_spec: str, out_dir: str | Path, *, rope_theta: float,
              recipe_text: str | None = None, recipe_name: str = "recipe.toml", card: str | None = None,
              max_bytes: int | None = MAX_MODEL_BYTES) -> Path:
    """Write the HuggingFace directory; returns its path. The weights are saved in bfloat16.

    max_bytes: refuse (ValueError) if model.safetensors would be larger; None = no limit.
    """
    out = Path(out_dir)
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    m = copy.deepcopy(model).to("cpu", torch.bfloat16)
    m.config.use_cache = True
    m.save_pretrained(str(tmp), safe_serialization=True)
    weights = tmp / "model.safetensors"
    if max_bytes is not None and weights.stat().st_size > max_bytes:
        size = weights.stat().st_size
        shutil.rmtree(tmp)
        raise ValueError(f"model: {size / 2**20:.1f} MiB of weights exceeds the {max_bytes / 2**20:.0f} MiB limit")
    _compat_config(tmp / "config.json", rope_theta)
    save_tokenizer(resolve_tokenizer_path(tokenizer_spec), tmp, m.config.max_position_embeddings)
    if recipe_text is not None:
        (tmp / recipe_name).write_text(recipe_text)
    if card is not None:
        (tmp / "README.md").write_text(card)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out
