"""Load a causal LM and its tokenizer from a local HuggingFace directory, offline.

``load_model()`` with no argument loads sparsa's shipped default model, sparsa-tiny.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any


def resolve_model_path(name_or_path: str | Path | None) -> Path:
    """A model directory: None or "sparsa-tiny" -> the shipped default; else a local directory."""
    from ..assets import DEFAULT_MODEL_DIR, DEFAULT_MODEL_NAME, has_default_model

    if name_or_path is None or str(name_or_path) == DEFAULT_MODEL_NAME:
        if not has_default_model():
            raise FileNotFoundError(f"model: the default model {DEFAULT_MODEL_NAME!r} is not present in this "
                                    f"installation ({DEFAULT_MODEL_DIR}); pass a model directory")
        return DEFAULT_MODEL_DIR
    p = Path(name_or_path)
    if not (p / "config.json").is_file():
        raise FileNotFoundError(f"model: {p} is not a model directory (no config.json); nothing is downloaded, "
                                "so pass a local HuggingFace model directory")
    return p


def dtype_kwarg() -> str:
    """Name of ``from_pretrained``'s dtype argument: "dtype" since transformers 4.56, "torch_dtype" before."""
    import transformers

    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    return "dtype" if (major, minor) >= (4, 56) else "torch_dtype"


def load_model(name_or_path: str | Path | None = None, *, device: str | None = None, dtype: Any = None,
               attn_implementation: str | None = "sdpa"):
    """(model, tokenizer) from a local directory, offline (``local_files_only``), in eval mode.

    device: "cpu"/"cuda"/...; default CUDA when available. dtype: torch dtype; default bfloat16
    on CUDA and float32 on CPU.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model_path(name_or_path)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype is None:
        dtype = torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    kw: dict[str, Any] = {"local_files_only": True}
    if attn_implementation is not None:
        kw["attn_implementation"] = attn_implementation
    kw[dtype_kwarg()] = dtype
    model = AutoModelForCausalLM.from_pretrained(str(path), **kw)
    tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    return model.to(device).eval(), tok
