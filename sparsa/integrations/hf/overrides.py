"""Per-layer plans: which method each attention layer runs in prefill and in decode.

Rules (see :func:`sparsa.apply`):

* ``prefill`` runs on calls with more than one query (a prompt or a prompt chunk). A method
  with only a decode rule (``phase == "decode"``: H2O, SnapKV, Ada-SnapKV, Quest) prefills
  densely; ``None`` or ``"dense"`` is dense.
* ``decode`` runs on one-query calls after the prompt. A :class:`~sparsa.DecodeMethod` keeps a
  per-layer state (``init_decode`` after the prompt, ``decode_step`` per token); any other
  method is applied statelessly to the one query; ``None`` / ``"dense"`` is dense. The default,
  :data:`AUTO`, follows the prefill method: its decode rule if it has one, else dense.
* Layers with their own sliding window (Gemma2/3 local layers, Mistral or Qwen with
  ``sliding_window`` set) keep the model's windowed attention: the layer is local by design
  and its cache only holds the window.
* Layers whose scores are soft-capped (Gemma2's ``attn_logit_softcapping``) cannot run a
  sparse method: :func:`sparsa.apply` raises unless ``on_unsupported="dense"``, which runs
  those layers densely (soft-capping included).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import torch

from ...methods.base import DecodeMethod, Method
from ...methods.dense import Dense
from ...methods.registry import get_method


class _Auto:
    """Sentinel: decode follows the prefill method's decode rule (dense if it has none)."""

    def __repr__(self) -> str:
        return "AUTO"


AUTO: Any = _Auto()
_UNSET: Any = object()


@dataclass(frozen=True)
class Architecture:
    """What sparsa needs to know about one supported model family."""

    model_type: str
    attention_class: str
    softcap_attr: str | None = None      # module attribute holding the score soft-cap, if the model uses one
    window_from_config: bool = False     # the window is config.sliding_window on every layer (Mistral)


ARCHITECTURES: dict[str, Architecture] = {a.model_type: a for a in (
    Architecture("llama", "LlamaAttention"),
    Architecture("mistral", "MistralAttention", window_from_config=True),
    Architecture("qwen2", "Qwen2Attention"),
    Architecture("qwen3", "Qwen3Attention"),
    Architecture("gemma2", "Gemma2Attention", softcap_attr="attn_logit_softcapping"),
    Architecture("gemma3_text", "Gemma3Attention"),
)}


def supported_text() -> str:
    return ", ".join(f"{a.model_type} ({a.attention_class})" for a in ARCHITECTURES.values())


@dataclass
class LayerPlan:
    """What one attention layer runs.

    ``prefill`` / ``decode`` are None for dense. ``window`` is the layer's own sliding window
    (the layer then runs the model's windowed attention, whatever the methods say);
    ``softcap`` the layer's score soft-cap (dense only).
    """

    layer: int
    prefill: Method | None
    decode: Method | None
    window: int | None = None
    softcap: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def native(self) -> bool:
        """True when the layer runs the model's own (dense, maybe windowed) attention in both phases."""
        return self.window is not None or (self.prefill is None and self.decode is None)

    @property
    def stateful(self) -> bool:
        return self.window is None and isinstance(self.decode, DecodeMethod)

    def describe(self) -> str:
        if self.window is not None:
            return f"layer {self.layer}: model's sliding window ({self.window}) in prefill and decode"
        p = "dense" if self.prefill is None else self.prefill.name
        d = "dense" if self.decode is None else self.decode.name
        extra = f" ({'; '.join(self.notes)})" if self.notes else ""
        return f"layer {self.layer}: prefill={p}, decode={d}{extra}"


def as_method(value: Any, arg: str) -> Method | None:
    """A method name, a method object or None -> method object (None = dense)."""
    if value is None:
        return None
    if isinstance(value, str):
        m = get_method(value)
    elif isinstance(value, Method):
        m = value
    else:
        raise TypeError(f"{arg}: expected a method name, a method object (sparsa.get_method(...)) or None, "
                        f"got {type(value).__name__}")
    return None if isinstance(m, Dense) else m


def prefill_rule(m: Method | None) -> Method | None:
    """The method a prefill call runs: decode-only methods prefill densely."""
    if m is None or m.phase == "decode":
        return None
    return m


def decode_rule(decode: Any, prefill: Method | None, arg: str) -> Method | None:
    if decode is AUTO:
        return prefill if isinstance(prefill, DecodeMethod) else None
    return as_method(decode, arg)


def _layer_value(value: Any, layer: int) -> tuple[Any, Any]:
    """A ``layers`` entry -> (prefill, decode); decode AUTO where the entry leaves it open."""
    arg = f"layers[{layer}]"
    if isinstance(value, Mapping):
        unknown = set(value) - {"prefill", "decode"}
        if unknown:
            raise ValueError(f"{arg}: keys must be 'prefill' and/or 'decode', got {sorted(unknown)}")
        return value.get("prefill", _UNSET), value.get("decode", _UNSET)
    if isinstance(value, tuple):
        if len(value) != 2:
            raise ValueError(f"{arg}: a tuple entry must be (prefill, decode), got {len(value)} items")
        return value
    return value, AUTO


def resolve_plans(n_layers: int, prefill: Any, decode: Any, layers: Mapping[int, Any] | None) -> list[LayerPlan]:
    """Per-layer (prefill, decode) methods from :func:`sparsa.apply`'s arguments (no model facts yet)."""
    global_prefill = as_method(prefill, "prefill")
    global_decode = decode if decode is AUTO else as_method(decode, "decode")
    overrides: dict[int, tuple[Any, Any]] = {}
    if layers is not None:
        if not isinstance(layers, Mapping):
            raise TypeError(f"layers: expected a dict {{layer index: method}}, got {type(layers).__name__}")
        for key, value in layers.items():
            if isinstance(key, bool) or not isinstance(key, int):
                raise TypeError(f"layers: keys must be layer indices (int), got {key!r}")
            if not -n_layers <= key < n_layers:
                raise ValueError(f"layers: layer index {key} is out of range for a model with {n_layers} layers")
            idx = key % n_layers
            if idx in overrides:
                raise ValueError(f"layers: layer {idx} is given twice")
            overrides[idx] = _layer_value(value, idx)
    plans = []
    for i in range(n_layers):
        if i in overrides:
            p_spec, d_spec = overrides[i]
            p = global_prefill if p_spec is _UNSET else as_method(p_spec, f"layers[{i}]")
            if d_spec is _UNSET:
                d_spec = global_decode
            d = decode_rule(d_spec, p, f"layers[{i}]")
        else:
            p = global_prefill
            d = decode_rule(global_decode, p, "decode")
        plans.append(LayerPlan(i, prefill_rule(p), d))
    return plans


def attention_modules(model: torch.nn.Module, arch: Architecture) -> dict[int, torch.nn.Module]:
    """Layer index -> attention module of the given architecture."""
    found: dict[int, torch.nn.Module] = {}
    for module in model.modules():
        if type(module).__name__ == arch.attention_class:
            idx = getattr(module, "layer_idx", None)
            if not isinstance(idx, int):
                raise ValueError(f"model: attention module {type(module).__name__} has no integer layer_idx; "
                                 "sparsa cannot keep per-layer state for it")
            if idx in found:
                raise ValueError(f"model: two attention modules claim layer_idx {idx}")
            found[idx] = module
    return found


def layer_window(module: torch.nn.Module, config: Any, arch: Architecture) -> int | None:
    """The layer's own sliding window (None = full attention)."""
    if arch.window_from_config:
        w = getattr(config, "sliding_window", None)
    else:
        w = getattr(module, "sliding_window", None)
    return int(w) if w else None


def layer_softcap(module: torch.nn.Module, arch: Architecture) -> float | None:
    if arch.softcap_attr is None:
        return None
    cap = getattr(module, arch.softcap_attr, None)
    return float(cap) if cap else None
