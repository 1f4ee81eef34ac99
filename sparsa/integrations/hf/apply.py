"""``sparsa.apply``: run a transformers causal LM with sparse attention, reversibly."""
from __future__ import annotations

import itertools
import warnings
import weakref
from dataclasses import dataclass
from typing import Any, Mapping

import torch

from ...backend import BACKENDS
from ...methods.base import AttentionStats
from . import compat
from .attention import SparsaAttention, StatsRecorder, merge_stats
from .cache import SparsaCache, cache_for
from .overrides import (ARCHITECTURES, AUTO, LayerPlan, attention_modules, layer_softcap, layer_window,
                        resolve_plans, supported_text)

ON_UNSUPPORTED = ("error", "dense")
_MISSING = object()

_counter = itertools.count()
# model -> weak reference to its active handle (the handle itself refers to the model)
_active: "weakref.WeakKeyDictionary[torch.nn.Module, weakref.ref[SparsaHandle]]" = weakref.WeakKeyDictionary()


def _unregister(name: str) -> None:
    compat.unregister_attention(name)
    compat.unregister_mask(name)


class SparsaHandle:
    """What :func:`apply` changed on a model, and the way back.

    Use it as a context manager (``with sparsa.apply(model, ...):``) or call :meth:`remove`.
    Attributes: ``name`` (the key registered with transformers), ``plans`` (one
    :class:`~sparsa.integrations.hf.overrides.LayerPlan` per layer), ``prefill_chunk``.
    """

    def __init__(self, model: torch.nn.Module, name: str, plans: list[LayerPlan], fn: SparsaAttention,
                 previous: str | None, prefill_chunk: int | None) -> None:
        self.model = model
        self.name = name
        self.plans = plans
        self.prefill_chunk = prefill_chunk
        self._fn = fn
        self._previous = previous
        self._hook: Any = None
        self._previous_generate: Any = model.__dict__.get("generate", _MISSING)
        self._cache_kwarg = compat.cache_kwarg_name(model)
        self.active = False

    # -- caches -------------------------------------------------------------------------------------

    def new_cache(self, *, defer_release: bool = False) -> SparsaCache:
        """An empty :class:`SparsaCache` for this model (pass it as the cache of ``model()``/``generate()``).

        ``defer_release``: keep each compact layer's full keys and values until the first decode
        step, so that the prompt may arrive in several calls (see :class:`SparsaCache`).
        """
        return SparsaCache(compat.text_config(self.model), defer_release=defer_release)

    @torch.no_grad()
    def prefill_cache(self, cache: SparsaCache, layer: int, keys: torch.Tensor, values: torch.Tensor,
                      queries: torch.Tensor | None = None, *, attention_mask: torch.Tensor | None = None,
                      scale: float | None = None) -> None:
        """Fill one layer of ``cache`` as a prompt would, from given keys and values.

        For benchmarks and tests that start decoding from a long context without running the
        prompt through the model. keys, values: (B, Hkv, L, D) in the model's dtype and device,
        RoPE applied (positions 0..L-1); queries (B, H, Lq, D): the prompt's last Lq queries,
        from which a stateful decode method plans (H2O accumulates their attention, SnapKV
        scores with its observation window; required for stateful layers, ignored otherwise);
        attention_mask (B, L): 1 for real tokens; scale: the attention scale (default
        ``D ** -0.5``). Fill every full-attention layer once, in any order, before decoding.
        """
        if not isinstance(cache, SparsaCache):
            raise TypeError(f"cache: expected a SparsaCache (handle.new_cache()), got {type(cache).__name__}")
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < len(self.plans):
            raise ValueError(f"layer: must be an int in [0, {len(self.plans)}), got {layer!r}")
        for name, x in (("keys", keys), ("values", values)):
            if not isinstance(x, torch.Tensor) or x.ndim != 4:
                raise ValueError(f"{name}: expected a (batch, kv_heads, length, head_dim) tensor, got "
                                 f"{getattr(x, 'shape', type(x).__name__)}")
        if values.shape != keys.shape:
            raise ValueError(f"values: shape {tuple(values.shape)} must equal keys' {tuple(keys.shape)}")
        held, _ = compat.layer_kv(cache, layer)
        if layer in cache.sparsa_states or (held is not None and held.numel() > 0):
            raise ValueError(f"layer: layer {layer} of this cache is already filled")
        plan = self.plans[layer]
        padding = None
        if plan.stateful:
            if queries is None:
                raise ValueError(f"queries: layer {layer} decodes with {plan.decode.name}, which plans from the "
                                 "prompt's last queries; pass them as (batch, heads, n, head_dim)")
            if not isinstance(queries, torch.Tensor) or queries.ndim != 4 or queries.shape[0] != keys.shape[0] \
                    or queries.shape[-1] != keys.shape[-1] or not 1 <= queries.shape[2] <= keys.shape[2]:
                raise ValueError(f"queries: expected (batch={keys.shape[0]}, heads, 1 <= n <= {keys.shape[2]}, "
                                 f"head_dim={keys.shape[-1]}), got {getattr(queries, 'shape', None)}")
            if attention_mask is not None:
                if tuple(attention_mask.shape) != (keys.shape[0], keys.shape[2]):
                    raise ValueError(f"attention_mask: expected shape ({keys.shape[0]}, {keys.shape[2]}), got "
                                     f"{tuple(attention_mask.shape)}")
                padding = compat.padding_mask(attention_mask.to(keys.device), queries.shape[2], keys.shape[2])
        k_all, v_all = cache.update(keys, values, layer)
        cache_for(layer, k_all)                          # consume the record update() left
        if plan.stateful:
            sc = float(scale) if scale is not None else keys.shape[-1] ** -0.5
            self._fn._init_state(plan, cache, queries, k_all, v_all, padding, sc)

    # -- stats --------------------------------------------------------------------------------------

    @property
    def layer_stats(self) -> dict[tuple[int, str], AttentionStats]:
        """The latest :class:`~sparsa.AttentionStats` of each (layer, phase) ("prefill" / "decode")."""
        return dict(self._fn.stats.latest)

    def stats(self, phase: str = "prefill") -> AttentionStats | None:
        """The latest call of every layer in ``phase``, merged: the model-level achieved compression."""
        if phase not in ("prefill", "decode"):
            raise ValueError(f"phase: must be 'prefill' or 'decode', got {phase!r}")
        parts = [s for (_, p), s in sorted(self._fn.stats.latest.items()) if p == phase]
        return merge_stats(parts, "model", phase)

    def reset_stats(self) -> None:
        self._fn.stats.clear()

    def describe(self) -> str:
        """One line per layer: what it runs in prefill and decode."""
        return "\n".join(p.describe() for p in self.plans)

    # -- undo ---------------------------------------------------------------------------------------

    def remove(self) -> None:
        """Restore the model's attention implementation and unregister sparsa's functions (idempotent)."""
        if not self.active:
            return
        model = self.model
        try:
            compat.set_attn_implementation(model, self._previous)
        finally:
            if self._hook is not None:
                self._hook.remove()
                self._hook = None
            if getattr(model.__dict__.get("generate"), "_sparsa_handle", None) is self:
                if self._previous_generate is _MISSING:
                    del model.__dict__["generate"]
                else:
                    model.__dict__["generate"] = self._previous_generate
            _unregister(self.name)
            ref = _active.get(model)
            if ref is not None and ref() is self:
                del _active[model]
            self.active = False

    def __enter__(self) -> "SparsaHandle":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()

    def __repr__(self) -> str:
        state = "active" if self.active else "removed"
        return f"SparsaHandle({self.name!r}, {state}, {len(self.plans)} layers)"

    # -- wiring -------------------------------------------------------------------------------------

    def _forward_pre_hook(self, module: torch.nn.Module, args: tuple[Any, ...],
                          kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        """Give ``model(...)`` a SparsaCache when it would build a default cache, and reject caches
        whose keys are not the sequence so far (static caches)."""
        _, cache = compat.find_cache_kwarg(kwargs)
        if cache is not None:
            _check_cache(cache)
            return None
        use_cache = kwargs.get("use_cache")
        if use_cache is None:
            use_cache = getattr(compat.text_config(self.model), "use_cache", False)
        if not use_cache or len(args) > 3:  # a 4th positional argument may be the cache itself
            return None
        kwargs = dict(kwargs)
        kwargs[self._cache_kwarg] = self.new_cache()
        return args, kwargs

    def _make_generate(self) -> Any:
        original = self.model.generate
        handle = self

        def generate(*args: Any, **kwargs: Any) -> Any:
            _, cache = compat.find_cache_kwarg(kwargs)
            gen_config = kwargs.get("generation_config") or getattr(handle.model, "generation_config", None)
            impl = kwargs.get("cache_implementation", getattr(gen_config, "cache_implementation", None))
            use_cache = kwargs.get("use_cache", getattr(gen_config, "use_cache", True))
            if cache is None and impl is None and use_cache is not False:
                kwargs[handle._cache_kwarg] = handle.new_cache(defer_release=handle.prefill_chunk is not None)
            if handle.prefill_chunk is not None and "prefill_chunk_size" not in kwargs:
                if not compat.generate_supports_prefill_chunk():
                    raise RuntimeError(f"prefill_chunk: generate() of transformers {compat.TRANSFORMERS_VERSION} "
                                       "has no chunked prefill; use sparsa.integrations.hf.chunked_prefill")
                kwargs["prefill_chunk_size"] = handle.prefill_chunk
            return original(*args, **kwargs)

        generate.__doc__ = original.__doc__
        generate._sparsa_handle = handle  # type: ignore[attr-defined]
        return generate


def _check_cache(cache: Any) -> None:
    if isinstance(cache, compat.Cache) and not isinstance(cache, compat.cache_base_classes()):
        raise TypeError(f"cache: {type(cache).__name__} is not supported by sparsa attention, whose methods take "
                        "the keys as the whole sequence so far; use a DynamicCache or handle.new_cache()")


def _architecture(model: torch.nn.Module) -> tuple[Any, Any]:
    if not isinstance(model, torch.nn.Module) or not hasattr(model, "config"):
        raise TypeError(f"model: expected a transformers PreTrainedModel, got {type(model).__name__}")
    config = compat.text_config(model)
    model_type = getattr(config, "model_type", None)
    arch = ARCHITECTURES.get(model_type)
    if arch is None:
        raise ValueError(f"model: model type {model_type!r} ({type(model).__name__}) is not supported by "
                         f"sparsa.apply; supported: {supported_text()}")
    return config, arch


def apply(model: torch.nn.Module, prefill: Any = None, decode: Any = AUTO, *,
          layers: Mapping[int, Any] | None = None, prefill_chunk: int | None = None,
          on_unsupported: str = "error", backend: str | None = None) -> SparsaHandle:
    """Run ``model``'s attention through sparsa methods; returns a handle that undoes it.

    Args:
        model: a transformers causal LM of a supported family (Llama, Mistral, Qwen2, Qwen3,
            Gemma2, Gemma3 text); other families raise ``ValueError`` before anything changes.
        prefill: method for calls with several queries (prompt, prompt chunks): a registered
            name, a method object (``sparsa.get_method(name, **params)``) or None (dense).
            Decode-only methods (h2o, snapkv, ada_snapkv, quest) prefill densely.
        decode: method for one-token decode steps. A decode method (h2o, snapkv, ada_snapkv,
            quest, streaming, nsa) builds a per-layer state from the prompt and reads what it
            selects at every step; another method is applied to the single query; None is
            dense. The default follows ``prefill``: its decode rule if it has one, else dense.
        layers: per-layer overrides, ``{layer index: spec}``; spec is a method (name/object/None)
            for both phases, a ``(prefill, decode)`` tuple, or ``{"prefill": ..., "decode": ...}``
            (missing keys take the global arguments). E.g. ``{0: None, 1: None}`` keeps the
            first two layers dense, as Quest does. Negative indices count from the last layer,
            as Python's do (``{-1: None}``: the last layer dense); an index outside
            ``-num_layers .. num_layers - 1``, or one layer given twice (``0`` and ``-num_layers``),
            is a ``ValueError`` naming ``layers``.
        prefill_chunk: run prompts through ``generate()`` in chunks of this many tokens (each
            chunk attends sparsely to everything before it); see :func:`chunked_prefill` for
            ``model()`` loops.
        on_unsupported: what to do with layers whose attention a sparse method cannot honour
            (score soft-capping, Gemma2): "error" (default) raises ``ValueError`` naming them,
            "dense" runs them densely. Sliding-window layers always keep the model's window.
        backend: passed to every method call ("auto", "reference", "triton").

    Returns:
        A :class:`SparsaHandle`; ``with sparsa.apply(...) as h:`` restores the model on exit.

    Without a cache argument, ``model()`` and ``generate()`` get a :class:`SparsaCache`, where
    decode methods keep their state (a plain ``DynamicCache`` works for everything but stateful
    decode methods, which then raise; static caches and beam search are refused). H2O, SnapKV,
    Ada-SnapKV, StreamingLLM and Quest layers then hold only what the method keeps: after the
    prompt their keys and values move into the method's compact store (per-head
    variable-length for the evicting methods, paged with page bounds for Quest; see
    :class:`SparsaCache`), and every decode step runs the method's cache decoder on it (Triton
    kernels on CUDA, the reference ops on the CPU). The prompt must then come in one call, or
    in chunks through ``prefill_chunk`` / :func:`chunked_prefill`.

    Batches may be padded (left or right, as ``generate`` or a training forward produce):
    sparse rules run per batch row on that row's real tokens, so patterns and budgets never
    count padding; unpadded batches run in one call.

    A decode method's state is built from the last multi-token call's queries and all cached
    keys. With chunked prefill it therefore sees the last chunk's queries: SnapKV / Ada-SnapKV
    (observation window no longer than the chunk), Quest, Streaming and NSA get the same state
    as from one prefill; H2O accumulates attention from the last chunk only. A padded batch
    gets one store whose sequences are each planned on their own real tokens (a padded prompt
    chunk: one store per row); decode steps must be real tokens for every row.

    The handle's :meth:`SparsaHandle.stats` / ``layer_stats`` report the compression achieved by
    the latest prefill and decode calls (dense layers included in the model-level figure).
    """
    compat.check_version()
    if getattr(getattr(model, "config", None), "model_type", None) == "sparsa_nsa":
        raise ValueError("model: its attention is Native Sparse Attention, trained into the weights, so it is "
                         "sparse already; sparsa.apply's methods replace dense attention. Run the model as it is")
    config, arch = _architecture(model)
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"backend: must be one of {BACKENDS} or None, got {backend!r}")
    if on_unsupported not in ON_UNSUPPORTED:
        raise ValueError(f"on_unsupported: must be one of {ON_UNSUPPORTED}, got {on_unsupported!r}")
    if prefill_chunk is not None and (isinstance(prefill_chunk, bool) or not isinstance(prefill_chunk, int)
                                      or prefill_chunk < 1):
        raise ValueError(f"prefill_chunk: must be a positive int or None, got {prefill_chunk!r}")
    ref = _active.get(model)
    if ref is not None and ref() is not None and ref().active:
        raise RuntimeError("model: sparsa is already applied to this model; remove() the existing handle first")
    modules = attention_modules(model, arch)
    n_layers = int(getattr(config, "num_hidden_layers", len(modules)))
    if sorted(modules) != list(range(n_layers)):
        raise ValueError(f"model: expected {arch.attention_class} modules for layers 0..{n_layers - 1}, found "
                         f"{sorted(modules)}; supported: {supported_text()}")
    plans = resolve_plans(n_layers, prefill, decode, layers)

    windowed, capped = [], []
    for plan in plans:
        module = modules[plan.layer]
        plan.window = layer_window(module, config, arch)
        plan.softcap = layer_softcap(module, arch)
        sparse = plan.prefill is not None or plan.decode is not None
        if plan.window is not None:
            if sparse:
                windowed.append(plan.layer)
                plan.notes.append("sliding-window layer: the model's window attention is kept")
            plan.prefill = plan.decode = None
        elif plan.softcap is not None and sparse:
            capped.append(plan.layer)
    if capped:
        if on_unsupported == "error":
            raise ValueError(
                f"model: layers {capped} soft-cap attention scores (softcap={plans[capped[0]].softcap}), which "
                "sparse methods cannot apply; pass on_unsupported='dense' to run them densely, or set "
                "config.attn_logit_softcapping = None before loading if the model tolerates it")
        for i in capped:
            plans[i].prefill = plans[i].decode = None
            plans[i].notes.append("score soft-capping: run densely")
    if windowed:
        warnings.warn(f"sparsa.apply: layers {windowed} have their own sliding window "
                      f"({plans[windowed[0]].window}); they keep the model's window attention and do not run the "
                      "sparse methods (pass layers={i: None, ...} for them to silence this)", stacklevel=2)
    if capped:
        warnings.warn(f"sparsa.apply: layers {capped} soft-cap attention scores; they run densely", stacklevel=2)

    name = f"sparsa_{next(_counter)}"
    fn = SparsaAttention(plans, backend=backend, stats=StatsRecorder())
    previous = compat.get_attn_implementation(model)
    handle = SparsaHandle(model, name, plans, fn, previous, prefill_chunk)
    compat.register_attention(name, fn)
    compat.register_mask(name, compat.padding_mask_function)
    try:
        compat.set_attn_implementation(model, name)
        handle._hook = model.register_forward_pre_hook(handle._forward_pre_hook, with_kwargs=True)
        model.__dict__["generate"] = handle._make_generate()
    except BaseException:
        handle.active = True
        handle.remove()
        raise
    handle.active = True
    _active[model] = weakref.ref(handle)
    weakref.finalize(model, _unregister, name)  # a model dropped without remove() frees its registration
    return handle


@dataclass
class PrefillResult:
    """What :func:`chunked_prefill` returns: the filled cache and the last position's logits (B, vocab)."""

    cache: Any
    logits: torch.Tensor


@torch.no_grad()
def chunked_prefill(model: torch.nn.Module, input_ids: torch.Tensor, chunk: int, *,
                    attention_mask: torch.Tensor | None = None, cache: Any = None) -> PrefillResult:
    """Run a prompt through ``model`` in chunks of ``chunk`` tokens, filling one cache.

    Each chunk is a forward over its tokens with the cache of all earlier chunks, so its
    queries are the last positions of the keys and a sparse prefill method attends sparsely to
    everything so far. With sparsa applied, decode methods build their state from the last
    chunk; layers that decode on a compact store keep their full keys and values until the
    first decode step builds the store (so a later call may extend the prompt). To continue
    with ``generate``, prefill ``input_ids[:, :-1]`` and pass the full ``input_ids`` (and mask)
    with ``cache=result.cache`` (``past_key_values=`` in 4.x): generate then runs the last
    prompt token as its first step. Manual decode steps can start from ``result.logits``.

    Args:
        model: a causal LM (sparsa applied or not).
        input_ids: (B, L) prompt tokens.
        chunk: tokens per forward (>= 1).
        attention_mask: (B, L) padding mask (1 = real token), if the batch is padded.
        cache: a cache to extend; default a new :class:`SparsaCache`.
    """
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk: must be a positive int, got {chunk!r}")
    if not isinstance(input_ids, torch.Tensor) or input_ids.ndim != 2 or input_ids.shape[1] < 1:
        raise ValueError(f"input_ids: expected a (batch, length) tensor with length >= 1, got "
                         f"{getattr(input_ids, 'shape', type(input_ids).__name__)}")
    if attention_mask is not None and attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask: shape {tuple(attention_mask.shape)} must equal input_ids' "
                         f"{tuple(input_ids.shape)}")
    if cache is None:
        cache = SparsaCache(compat.text_config(model))
    key = compat.cache_kwarg_name(model)
    past = cache.get_seq_length()
    length = input_ids.shape[1]
    logits = None
    deferred = getattr(cache, "defer_release", None)
    if deferred is not None:
        cache.defer_release = True
    try:
        for start in range(0, length, chunk):
            end = min(length, start + chunk)
            kwargs: dict[str, Any] = {key: cache, "use_cache": True}
            if attention_mask is not None:
                ones = attention_mask.new_ones(attention_mask.shape[0], past)
                kwargs["attention_mask"] = torch.cat([ones, attention_mask[:, :end]], dim=1)
                positions = (attention_mask[:, :end].long().cumsum(-1) - 1).clamp_min(0) + past
                kwargs["position_ids"] = positions[:, start:end]
            out = model(input_ids[:, start:end], **kwargs)
            cache = compat.output_cache(out) or cache
            logits = out.logits[:, -1]
    finally:
        if deferred is not None:
            cache.defer_release = deferred
    assert logits is not None
    return PrefillResult(cache, logits)
