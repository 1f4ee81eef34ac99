"""Load a causal LM and its tokenizer offline: the shipped default, a local directory, a cached hub id or a GGUF file.

``load_model()`` with no argument loads sparsa's shipped default model, sparsa-tiny. A real
pretrained model for evaluation, SmolLM2-135M-Instruct as a GGUF file, is fetched once with
``python -m sparsa.eval.fetch DIR`` (see :mod:`sparsa.eval.fetch`) and loaded with
``load_model("DIR/SmolLM2-135M-Instruct.Q4_1.gguf")``. Nothing is downloaded at run time.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import torch

from .._validation import check_device
from ..assets import DEFAULT_MODEL_DIR, DEFAULT_MODEL_NAME, has_default_model

GGUF_MAGIC = b"GGUF"
_WEIGHT_PATTERNS = ("*.safetensors", "*.bin")
_REAL_EXTRA = 'pip install "sparsa[real]"'


class MissingDependencyError(ImportError, ValueError):
    """A package needed to load this kind of model is not installed (a ValueError too, so callers
    that validate the ``model`` argument catch it with the other bad-argument errors)."""


def is_gguf_file(path: str | Path) -> bool:
    """Whether ``path`` is a file starting with the 4-byte GGUF magic ``b"GGUF"``."""
    p = Path(path)
    if not p.is_file():
        return False
    with open(p, "rb") as fh:
        return fh.read(4) == GGUF_MAGIC


def _check_gguf(p: Path) -> Path:
    if not p.is_file():
        raise FileNotFoundError(f"model: GGUF file {p} does not exist")
    if not is_gguf_file(p):
        with open(p, "rb") as fh:
            head = fh.read(4)
        raise ValueError(f"model: {p} is not a GGUF file (it starts with {head!r}, a GGUF file with {GGUF_MAGIC!r})")
    return p


def _check_directory(p: Path) -> Path:
    if not (p / "config.json").is_file():
        ggufs = sorted(p.glob("*.gguf"))
        if len(ggufs) == 1:
            return _check_gguf(ggufs[0])
        if len(ggufs) > 1:
            raise ValueError(f"model: {p} holds several GGUF files ({', '.join(g.name for g in ggufs)}); "
                             "pass the path of one of them")
        raise FileNotFoundError(f"model: {p} is not a model directory (no config.json and no .gguf file); "
                                "nothing is downloaded, so pass a local HuggingFace model directory, a "
                                "cached hub id or a .gguf file")
    if not any(any(p.glob(pat)) for pat in _WEIGHT_PATTERNS):
        raise ValueError(f"model: {p} has a config.json but no weights (no *.safetensors or *.bin file)")
    return p


def _looks_like_hub_id(s: str) -> bool:
    parts = s.split("/")
    return len(parts) == 2 and all(parts) and not s.startswith((".", "~")) and "\\" not in s


def _cached_hub_snapshot(repo_id: str) -> Path | None:
    """The local snapshot directory of ``repo_id`` in the HuggingFace cache, or None (never downloads)."""
    try:
        from huggingface_hub import snapshot_download  # local: optional dependency
    except ImportError:
        return None
    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # not cached (the hub client raises several types for that)
        return None


def resolve_model_path(name_or_path: str | Path | None) -> Path:
    """The local model a name refers to: a directory, or a ``.gguf`` file.

    Accepted: None or "sparsa-tiny" (the shipped default); a local HuggingFace model
    directory (config.json and *.safetensors / *.bin weights); a directory holding exactly
    one ``.gguf`` file; a ``.gguf`` file; a hub id ("owner/name") already in the local
    HuggingFace cache. Raises ``FileNotFoundError`` for a missing path or an uncached hub id and
    ``ValueError`` for a directory without weights or a file that is not GGUF.
    """
    if name_or_path is None or str(name_or_path) == DEFAULT_MODEL_NAME:
        if not has_default_model():
            raise FileNotFoundError(f"model: the default model {DEFAULT_MODEL_NAME!r} is not present in this "
                                    f"installation ({DEFAULT_MODEL_DIR}); pass a model directory")
        return DEFAULT_MODEL_DIR
    if not isinstance(name_or_path, (str, Path)):
        raise TypeError(f"model: expected a path or a name (str), got {type(name_or_path).__name__}")
    p = Path(name_or_path).expanduser()
    if p.is_dir():
        return _check_directory(p)
    if p.is_file():
        if p.suffix.lower() == ".gguf" or is_gguf_file(p):
            return _check_gguf(p)
        raise ValueError(f"model: {p} is a file but not a GGUF file; pass a model directory or a .gguf file")
    if p.suffix.lower() == ".gguf":
        raise FileNotFoundError(f"model: GGUF file {p} does not exist")
    if isinstance(name_or_path, str) and _looks_like_hub_id(name_or_path):
        snap = _cached_hub_snapshot(name_or_path)
        if snap is not None:
            return _check_directory(snap)
        raise FileNotFoundError(f"model: {name_or_path!r} is neither a local path nor a hub id in the local "
                                "HuggingFace cache; nothing is downloaded at run time")
    raise FileNotFoundError(f"model: {p} does not exist")


def dtype_kwarg() -> str:
    """Name of ``from_pretrained``'s dtype argument: "dtype" since transformers 4.56, "torch_dtype" before."""
    import transformers  # local: defers transformers

    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    return "dtype" if (major, minor) >= (4, 56) else "torch_dtype"


def _require_gguf_support() -> None:
    missing = [m for m in ("gguf",) if importlib.util.find_spec(m) is None]
    import transformers  # local: defers transformers

    if int(transformers.__version__.split(".")[0]) >= 5 and importlib.util.find_spec("accelerate") is None:
        missing.append("accelerate")  # transformers 5 refuses gguf_file= without it
    if missing:
        raise MissingDependencyError(f"model: loading a GGUF file needs the {' and '.join(missing)} package(s); "
                                     f"install them with {_REAL_EXTRA}")


def load_model(name_or_path: str | Path | None = None, *, device: str | None = None, dtype: Any = None,
               attn_implementation: str | None = "sdpa"):
    """(model, tokenizer) from a local model (see :func:`resolve_model_path`), offline, in eval mode.

    device: "cpu"/"cuda"/...; default CUDA when available. dtype: torch dtype; default bfloat16
    on CUDA and float32 on CPU (a GGUF's quantized weights are dequantized to it by transformers).
    """
    if device is not None:
        check_device("device", device)
    from transformers import AutoModelForCausalLM, AutoTokenizer  # local: defers transformers

    from ..integrations.hf import nsa_model  # noqa: F401  local: registers the sparsa_nsa architecture

    path = resolve_model_path(name_or_path)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype is None:
        dtype = torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    kw: dict[str, Any] = {"local_files_only": True}
    if attn_implementation is not None:
        kw["attn_implementation"] = attn_implementation
    kw[dtype_kwarg()] = dtype
    tok_kw: dict[str, Any] = {"local_files_only": True}
    if path.is_file():  # a GGUF file: weights, config and tokenizer all come from it
        _require_gguf_support()
        kw["gguf_file"] = tok_kw["gguf_file"] = path.name
        path = path.parent
    model = AutoModelForCausalLM.from_pretrained(str(path), **kw)
    tok = AutoTokenizer.from_pretrained(str(path), **tok_kw)
    return model.to(device).eval(), tok


def model_context_length(model: Any) -> int | None:
    """The longest sequence the model was built for, in tokens (``max_position_embeddings``), or None.

    model: a HuggingFace model or its config.
    """
    cfg = getattr(model, "config", model)
    for attr in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        v = getattr(cfg, attr, None)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
    text_cfg = getattr(cfg, "text_config", None)
    return model_context_length(text_cfg) if text_cfg is not None and text_cfg is not cfg else None


def check_context_length(model: Any, length: int, what: str = "length") -> None:
    """Raise ``ValueError`` if ``length`` tokens exceed the model's context (when the model states one).

    length: a prompt length plus the tokens to generate, in tokens.
    """
    limit = model_context_length(model)
    if limit is not None and length > limit:
        raise ValueError(f"{what}: {length} tokens exceed the model's context of {limit} tokens "
                         "(max_position_embeddings)")
