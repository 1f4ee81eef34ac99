"""Per-head pattern assignments: score candidate methods on one layer's heads, save and load
the assignment file that ``sparsa search-patterns`` writes.

The search follows MInference's offline idea (each head keeps the pattern that fits it best
at a fixed budget) with a criterion any method can be scored by: the relative error of the
head's attention output against dense attention, ``||o_method - o_dense|| / ||o_dense||`` over
all query rows of the calibration prompt.

File format (JSON)::

    {"format": "sparsa-head-patterns", "version": 1,
     "compression": 10.0, "candidates": [{"method": "streaming", "mode": "prefill", "compression": 10.0}, ...],
     "calibration": {...free-form: model, task, length...},
     "layers": {"0": {"heads": [<candidate spec of head 0>, ...],
                      "errors": [[<error of candidate 0>, ...] per head]}, ...}}

``load_head_patterns(path)`` turns it into ``{layer: PerHead}`` for ``sparsa.apply(layers=...)``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from .methods.base import AttentionStats, Method
from .methods.per_head import PerHead, head_method
from .methods.registry import get_method

FORMAT = "sparsa-head-patterns"
VERSION = 1
DEFAULT_CANDIDATES = ("streaming", "vertical_slash", "block_sparse")


def candidate_spec(name: str, compression: float) -> dict[str, Any]:
    """The spec a candidate method runs with at a prefill ``compression`` target."""
    spec: dict[str, Any] = {"method": name, "compression": float(compression)}
    if name == "streaming":
        spec["mode"] = "prefill"   # read the target as prefill pairs, not tokens per decode step
    m = head_method(spec, f"candidates[{name!r}]")
    if m is None:
        raise ValueError(f"candidates: {name!r} is dense; candidates must be sparse prefill methods")
    return spec


def head_errors(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, candidates: Sequence[Mapping[str, Any]], *,
                scale: float | None = None, backend: str | None = None) -> torch.Tensor:
    """Relative output error of every candidate on every query head.

    q: (B, H, L, D); k, v: (B, Hkv, L, D) (one layer's prompt). Returns (H, C) float64:
    ``||o_c - o_dense|| / ||o_dense||`` per head, norms over batch, query rows and head dim.
    Each candidate runs once on the whole layer (so a ``compression`` target is solved over
    all heads together).
    """
    return score_layer(q, k, v, candidates, scale=scale, backend=backend)[0]


def score_layer(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, candidates: Sequence[Mapping[str, Any]], *,
                scale: float | None = None,
                backend: str | None = None) -> tuple[torch.Tensor, torch.Tensor, AttentionStats]:
    """(:func:`head_errors`, the dense output (B, H, L, D), its stats) in one pass."""
    dense, stats = get_method("dense")(q, k, v, scale=scale, backend=backend)
    ref = dense.double()
    norm = ref.pow(2).sum(dim=(0, 2, 3)).sqrt().clamp_min(1e-30)
    errs = torch.empty(q.shape[1], len(candidates), dtype=torch.float64)
    for c, spec in enumerate(candidates):
        m = head_method(dict(spec), f"candidates[{c}]")
        out, _ = m(q, k, v, scale=scale, backend=backend)
        errs[:, c] = ((out.double() - ref).pow(2).sum(dim=(0, 2, 3)).sqrt() / norm).cpu()
    return errs, dense, stats


def choose(errors: torch.Tensor) -> list[int]:
    """Index of the lowest-error candidate per head (ties: the earlier candidate)."""
    return errors.argmin(dim=1).tolist()


def layer_entry(errors: torch.Tensor, candidates: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One layer's file entry from its (H, C) error table."""
    return {"heads": [dict(candidates[c]) for c in choose(errors)],
            "errors": [[round(float(e), 6) for e in row] for row in errors]}


def write_patterns(path: str | Path, layers: Mapping[int, Mapping[str, Any]], *, compression: float,
                   candidates: Sequence[Mapping[str, Any]], calibration: Mapping[str, Any]) -> Path:
    """Write the assignment file atomically (a partial file never replaces a complete one)."""
    path = Path(path)
    doc = {"format": FORMAT, "version": VERSION, "compression": float(compression),
           "candidates": [dict(c) for c in candidates], "calibration": dict(calibration),
           "layers": {str(i): dict(layers[i]) for i in sorted(layers)}}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    os.replace(tmp, path)
    return path


def read_patterns(path: str | Path) -> dict[str, Any]:
    """The parsed file, checked for its format and shape."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"path: no pattern file at {path}")
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"path: {path} is not JSON ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ValueError(f"path: {path} is not a sparsa head-pattern file (format must be {FORMAT!r})")
    if doc.get("version") != VERSION:
        raise ValueError(f"path: {path} has version {doc.get('version')!r}; this sparsa reads version {VERSION}")
    layers = doc.get("layers")
    if not isinstance(layers, dict) or not all(isinstance(e, dict) and isinstance(e.get("heads"), list)
                                               for e in layers.values()):
        raise ValueError(f"path: {path} needs 'layers': {{index: {{'heads': [...]}}}}")
    return doc


def load_head_patterns(path: str | Path) -> dict[int, Method]:
    """``{layer index: PerHead}`` from a pattern file, for ``sparsa.apply(model, layers=...)``.

    Layers absent from the file take ``apply``'s global arguments.
    """
    doc = read_patterns(path)
    out: dict[int, Method] = {}
    for key, entry in doc["layers"].items():
        try:
            idx = int(key)
        except ValueError:
            raise ValueError(f"path: layer key {key!r} is not an integer") from None
        out[idx] = PerHead(heads=list(entry["heads"]))
    return out


def summary(layers: Mapping[Any, Mapping[str, Any]]) -> dict[str, int]:
    """How many heads took each candidate method, over all layers (a file's ``layers`` entry)."""
    counts: dict[str, int] = {}
    for entry in layers.values():
        for spec in entry["heads"]:
            name = spec if isinstance(spec, str) else (spec or {}).get("method", "dense")
            counts[name] = counts.get(name, 0) + 1
    return counts
