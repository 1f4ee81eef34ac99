"""``sparsa search-patterns`` on a transformers model: score candidate methods per head on a
calibration prompt and keep each head's best (see :mod:`sparsa.patterns`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from ...methods.base import AttentionStats, Method
from ...patterns import DEFAULT_CANDIDATES, candidate_spec, layer_entry, score_layer
from .apply import apply


@dataclass
class _ScoreLayer(Method):
    """Runs dense attention and records every candidate's per-head error on the way."""

    name = "pattern_search"
    phase = "prefill"

    layer: int = 0
    candidates: list = field(default_factory=list)
    sink: dict = field(default_factory=dict)
    on_done: Any = None

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float,
                backend: str | None) -> tuple[torch.Tensor, AttentionStats]:
        if q.shape[2] != k.shape[2]:
            raise ValueError("input_ids: the search runs the calibration prompt in one forward (no cache)")
        errs, out, stats = score_layer(q, k, v, self.candidates, scale=scale, backend=backend)
        self.sink[self.layer] = errs
        if self.on_done is not None:
            self.on_done()
        return out, stats


def search_head_patterns(model: torch.nn.Module, input_ids: torch.Tensor, *, compression: float = 10.0,
                         candidates: Sequence[str] = DEFAULT_CANDIDATES, backend: str | None = None,
                         progress: bool = True) -> tuple[dict[int, dict[str, Any]], list[dict[str, Any]]]:
    """Per-head assignment for every full-attention layer of ``model``.

    input_ids: (1, L) calibration prompt. ``candidates`` run at the prefill ``compression``
    target; each head keeps the one with the lowest relative output error against dense
    attention. Layers with their own sliding window keep it and get no entry.

    Returns ({layer: {"heads": [spec per head], "errors": [[error per candidate] per head]}},
    the candidate specs).
    """
    if not isinstance(input_ids, torch.Tensor) or input_ids.ndim != 2 or input_ids.shape[0] != 1:
        raise ValueError(f"input_ids: expected a (1, L) tensor, got {getattr(input_ids, 'shape', type(input_ids))}")
    specs = [candidate_spec(n, compression) for n in candidates]
    if not specs:
        raise ValueError("candidates: give at least one candidate method")
    n_layers = int(model.config.get_text_config().num_hidden_layers)
    sink: dict[int, torch.Tensor] = {}
    bar = tqdm(total=n_layers, desc="search-patterns", unit="layer", disable=not progress)
    scorers = {i: _ScoreLayer(layer=i, candidates=specs, sink=sink, on_done=lambda: bar.update(1))
               for i in range(n_layers)}
    try:
        with apply(model, prefill=None, decode=None, layers=scorers, backend=backend, on_unsupported="dense"):
            with torch.no_grad():
                model(input_ids.to(next(model.parameters()).device), use_cache=False)
    finally:
        bar.close()
    return {i: layer_entry(sink[i], specs) for i in sorted(sink)}, specs
