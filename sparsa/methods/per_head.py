"""Per-head prefill patterns: each query head of a layer runs its own method.

MInference assigns every head one of a few patterns by an offline search
(``sparsa search-patterns``, :mod:`sparsa.patterns`); :class:`PerHead` runs such an
assignment for one layer.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import torch

from ..ops.dense.reference import causal_pairs
from .base import AttentionStats, Method
from .registry import get_method


def head_method(spec: Any, arg: str) -> Method | None:
    """One head's spec -> method object (None = dense).

    A spec is None / ``"dense"``, a registered method name, ``{"method": name, **params}``
    or a :class:`Method` object. Decode-only methods (H2O, SnapKV, Ada-SnapKV, Quest) have no
    prefill rule and are refused.
    """
    if spec is None:
        return None
    if isinstance(spec, Method):
        m = spec
    elif isinstance(spec, str):
        m = get_method(spec)
    elif isinstance(spec, dict):
        if "method" not in spec:
            raise ValueError(f"{arg}: a dict spec needs a 'method' key, got keys {sorted(spec)}")
        m = get_method(spec["method"], **{k: v for k, v in spec.items() if k != "method"})
    else:
        raise TypeError(f"{arg}: expected None, a method name, a dict {{'method': name, ...}} or a method "
                        f"object, got {type(spec).__name__}")
    if m.phase == "decode":
        raise ValueError(f"{arg}: {m.name} is a decode-only method and has no per-head prefill rule")
    if isinstance(m, PerHead):
        raise ValueError(f"{arg}: per_head specs cannot nest")
    return None if m.name == "dense" else m


def _fallback_heads(flag: bool | int, heads: int) -> int:
    """Query heads that ran dense, from a sub-call's ``info["dense_fallback"]`` (bool: all or none)."""
    return heads if flag is True else int(flag)


def _key(m: Method | None) -> str:
    return "dense" if m is None else json.dumps([m.name, m.params()], sort_keys=True, default=str)


@dataclass
class PerHead(Method):
    """Query head ``h`` runs ``heads[h]`` (a method spec, see :func:`head_method`).

    Heads with equal specs run together in one call of their method, on those query heads and
    the KV heads they read (a KV head shared with heads of another method is read by both).
    A method that solves a ``compression`` target does so over the heads it runs on.
    ``compression`` here is unused (each spec carries its own) and must be unset or 1.

    Stats: pairs summed over all heads, ``per_head`` each head's own compression,
    ``info["dense_fallback"]`` the query heads whose method ran dense attention instead of its
    pattern. Each head's method runs as a prefill method (:meth:`Method.for_prefill`).

    Not in the method registry (it has no ``compression`` target of its own); build it
    directly or load a search result with :func:`sparsa.patterns.load_head_patterns`.
    """

    name = "per_head"
    phase = "prefill"
    paper = "per-head assignment as in MInference (Jiang et al., 2024)"
    fast_masks = True

    heads: list = field(default_factory=list)

    def validate(self) -> None:
        if self.compression not in (None, 1.0):
            raise ValueError(f"compression: per_head takes each head's own compression, got {self.compression}")
        if not isinstance(self.heads, (list, tuple)) or not self.heads:
            raise ValueError("heads: expected a non-empty list of per-head method specs")
        self._methods = [head_method(s, f"heads[{i}]") for i, s in enumerate(self.heads)]

    def groups(self) -> list[tuple[Method | None, list[int]]]:
        """(method, query heads running it), in order of first appearance."""
        out: dict[str, tuple[Method | None, list[int]]] = {}
        for h, m in enumerate(self._methods):
            out.setdefault(_key(m), (m, []))[1].append(h)
        return list(out.values())

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float,
                backend: str | None) -> tuple[torch.Tensor, AttentionStats]:
        B, H, lq, _ = q.shape
        hkv = k.shape[1]
        if len(self.heads) != H:
            raise ValueError(f"heads: {len(self.heads)} specs for a layer with {H} query heads")
        group = H // hkv
        out = torch.empty_like(q)
        dense_head = float(causal_pairs(lq, k.shape[2])) * B
        pairs = torch.zeros(H, dtype=torch.float64)
        dense_method = get_method("dense")
        groups = self.groups()
        fallback = 0
        for m, hs in groups:
            kv = sorted({h // group for h in hs})
            whole = hs == [g * group + j for g in kv for j in range(group)]
            if whole:   # complete KV groups: keep GQA, read each KV head once
                kv_idx = torch.tensor(kv, device=q.device)
            else:       # a KV group split between methods: one KV head per query head
                kv_idx = torch.tensor([h // group for h in hs], device=q.device)
            h_idx = torch.tensor(hs, device=q.device)
            o, st = (m or dense_method).for_prefill()(q.index_select(1, h_idx), k.index_select(1, kv_idx),
                                        v.index_select(1, kv_idx), scale=scale, backend=backend)
            out.index_copy_(1, h_idx, o)
            fallback += _fallback_heads(st.info.get("dense_fallback", False), len(hs))
            if st.per_head is not None and st.phase == "prefill":
                pairs[hs] = dense_head / st.per_head.double().clamp_min(1e-30)
            else:
                pairs[hs] = st.computed / len(hs)
        per_head = dense_head / pairs.clamp_min(1e-30)
        info = {"groups": [("dense" if m is None else m.name, len(hs)) for m, hs in groups], "dense_fallback": fallback}
        return out, AttentionStats(self.name, "prefill", dense_head * H, float(pairs.sum()), per_head, info)
