"""Everything that depends on the installed transformers version, in one place.

The rest of :mod:`sparsa.integrations.hf` only calls the functions here. What drifts between
versions and is absorbed here:

* registration: ``AttentionInterface`` and ``AttentionMaskInterface`` (the mask function is
  what hands the attention function a plain padding mask; before 4.53 models built 4-D masks
  themselves, hence the lower bound);
* switching a model's attention: ``model.set_attn_implementation`` where it exists, else the
  config's ``_attn_implementation``;
* the cache keyword of ``forward``/``generate`` (``past_key_values`` in 4.x, ``cache`` from 5.x)
  and of model outputs;
* the mask function's arguments (``q_length``/``q_offset`` in 5.x, ``cache_position`` before);
* ``DynamicCache``'s constructor (``config=`` from 4.56), ``crop``'s argument, and where a
  layer's keys and values live (``cache.layers[i].keys`` in recent versions, the
  ``key_cache``/``value_cache`` lists in older ones).
"""
from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any, Callable

import torch

try:
    import transformers
except ImportError as exc:  # pragma: no cover - exercised only without the extra installed
    raise ImportError("sparsa.integrations.hf needs transformers: pip install 'sparsa[hf]'") from exc

from packaging.version import Version
from transformers.cache_utils import Cache, DynamicCache  # noqa: F401  (Cache: apply checks against it)

#: Supported transformers versions, [MIN, MAX); keep in sync with pyproject's ``hf`` extra.
MIN_VERSION = Version("4.53")
MAX_VERSION = Version("6")
TRANSFORMERS_VERSION = Version(transformers.__version__)


def check_version(version: Version | str | None = None) -> Version:
    """Raise ``RuntimeError`` unless the installed (or given) transformers version is supported."""
    v = TRANSFORMERS_VERSION if version is None else Version(str(version))
    if not (MIN_VERSION <= Version(v.base_version) < MAX_VERSION):
        raise RuntimeError(f"transformers {v} is not supported by sparsa.apply; supported: "
                           f">={MIN_VERSION},<{MAX_VERSION} (pip install 'sparsa[hf]')")
    return v


# ---------------------------------------------------------------------------------- registration

def _attention_interface() -> type:
    return transformers.AttentionInterface


def _mask_interface() -> type | None:
    try:
        # local: only newer transformers have masking_utils
        from transformers.masking_utils import AttentionMaskInterface
    except ImportError:
        return None
    return AttentionMaskInterface


def register_attention(name: str, fn: Callable[..., Any]) -> None:
    _attention_interface().register(name, fn)


def unregister_attention(name: str) -> None:
    # GeneralInterface has no public removal; the class-wide mapping is where register() wrote
    _attention_interface()._global_mapping.pop(name, None)


def register_mask(name: str, fn: Callable[..., Any]) -> bool:
    """Register a mask function under ``name``; False where the version has no mask interface."""
    iface = _mask_interface()
    if iface is None:
        return False
    iface.register(name, fn)
    return True


def unregister_mask(name: str) -> None:
    iface = _mask_interface()
    if iface is not None:
        iface._global_mapping.pop(name, None)


def is_registered(name: str) -> bool:
    iface = _mask_interface()
    return name in _attention_interface()._global_mapping or (iface is not None and name in iface._global_mapping)


# ---------------------------------------------------------------------------------- model switches

def text_config(model: torch.nn.Module) -> Any:
    """The decoder's config (the model's own for text-only causal LMs)."""
    config = model.config
    getter = getattr(config, "get_text_config", None)
    if getter is not None:
        try:
            return getter(decoder=True)
        except TypeError:
            return getter()
    return config


def get_attn_implementation(model: torch.nn.Module) -> str | None:
    return getattr(model.config, "_attn_implementation", None)


def set_attn_implementation(model: torch.nn.Module, name: str | None) -> None:
    """Make every attention layer of ``model`` dispatch to the implementation ``name``."""
    setter = getattr(model, "set_attn_implementation", None)
    if setter is not None and name is not None:
        setter(name)
        if get_attn_implementation(model) == name:
            return
    # older versions (or a refused dynamic switch): the config attribute is what layers read
    seen: set[int] = set()
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and id(config) not in seen and hasattr(config, "_attn_implementation"):
            seen.add(id(config))
            if hasattr(config, "_attn_implementation_internal"):
                config._attn_implementation_internal = name
            else:
                config._attn_implementation = name


# ---------------------------------------------------------------------------------- caches

def dynamic_cache_class() -> type:
    return DynamicCache


def cache_base_classes() -> tuple[type, ...]:
    """Cache classes sparsa can keep method state next to (caches that hold every token)."""
    return (dynamic_cache_class(),)


def init_dynamic_cache(cache: Any, config: Any | None) -> None:
    """Run ``DynamicCache.__init__`` on ``cache``, passing ``config`` where the version accepts it.

    A config with sliding-window layers then gets window-limited layers, as transformers'
    default cache does.
    """
    base = dynamic_cache_class()
    params = inspect.signature(base.__init__).parameters
    if config is not None and "config" in params:
        base.__init__(cache, config=config)
    else:
        base.__init__(cache)


def _layer_store(cache: Any, layer_idx: int) -> Any:
    """The per-layer object holding ``keys``/``values``; None for list-based caches, False for a
    layer the cache has not created yet."""
    layers = cache.__dict__.get("layers")
    if isinstance(layers, list):
        return layers[layer_idx] if layer_idx < len(layers) else False
    return None


def layer_kv(cache: Any, layer_idx: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The full keys and values a ``DynamicCache`` holds for one layer, (B, Hkv, S, D) each, or
    (None, None) when the layer holds nothing yet."""
    store = _layer_store(cache, layer_idx)
    if store is False:
        return None, None
    if store is not None:
        return getattr(store, "keys", None), getattr(store, "values", None)
    keys, values = getattr(cache, "key_cache", []), getattr(cache, "value_cache", [])
    if layer_idx >= len(keys):
        return None, None
    return keys[layer_idx], values[layer_idx]


def release_layer_kv(cache: Any, layer_idx: int) -> None:
    """Replace one layer's keys and values in a ``DynamicCache`` by empty tensors (same batch,
    heads, head_dim, dtype and device), so their memory is freed."""
    keys, values = layer_kv(cache, layer_idx)
    if keys is None or values is None:
        return

    def empty(x: torch.Tensor) -> torch.Tensor:
        shape = tuple(x.shape[:-2]) + (0,) + tuple(x.shape[-1:]) if x.ndim >= 2 else (0,)
        return x.new_empty(shape)

    store = _layer_store(cache, layer_idx)
    if store is not None:
        store.keys, store.values = empty(keys), empty(values)
    else:
        cache.key_cache[layer_idx], cache.value_cache[layer_idx] = empty(keys), empty(values)


def stack_left_padded(caches: Sequence[Any], width: int) -> Any:
    """One batched ``DynamicCache`` from single-row caches, each row left-padded to ``width``.

    caches: caches of batch 1 holding L_i <= width tokens each (every layer full, no sliding
    window). Row i's keys and values land at positions ``width - L_i ..``; the padded slots are
    zeros, which a (B, width) padding mask with zeros there keeps out of attention.
    """
    if not caches:
        raise ValueError("caches: need at least one cache")
    merged = dynamic_cache_class()()
    layer = 0
    while True:
        kv = [layer_kv(c, layer) for c in caches]
        if kv[0][0] is None:
            break
        if any(k is None or k.shape[0] != 1 or k.shape[-2] > width for k, _ in kv):
            raise ValueError(f"caches: layer {layer} must hold one row of at most {width} tokens in every cache")
        k0, v0 = kv[0]
        keys = k0.new_zeros((len(caches), k0.shape[1], width, k0.shape[-1]))
        values = v0.new_zeros((len(caches), v0.shape[1], width, v0.shape[-1]))
        for i, (k, v) in enumerate(kv):
            n = k.shape[-2]
            keys[i, :, width - n:] = k[0]
            values[i, :, width - n:] = v[0]
        merged.update(keys, values, layer)
        layer += 1
    return merged


def crop_removes(cache_len: int, arg: int) -> int:
    """Tokens ``Cache.crop(arg)`` removes from a cache holding ``cache_len``: a negative ``arg``
    is minus the count to remove, a positive one the length to keep; ``0`` keeps everything
    from 5.x on and nothing before."""
    if arg < 0:
        return min(cache_len, -arg)
    if arg == 0 and TRANSFORMERS_VERSION >= Version("5.0.0.dev0"):
        return 0
    return max(0, cache_len - arg)


def cache_kwarg_name(model: torch.nn.Module) -> str:
    """The keyword ``model.forward`` takes its KV cache under."""
    params = inspect.signature(model.forward).parameters
    if "cache" in params:
        return "cache"
    return "past_key_values"


CACHE_KWARGS = ("cache", "past_key_values")


def find_cache_kwarg(kwargs: dict[str, Any]) -> tuple[str | None, Any]:
    """(keyword, cache) of a cache passed by keyword, (None, None) if none was."""
    for key in CACHE_KWARGS:
        if kwargs.get(key) is not None:
            return key, kwargs[key]
    return None, None


def output_cache(outputs: Any) -> Any:
    """The cache a model output carries (``cache`` in 5.x, ``past_key_values`` before)."""
    for key in CACHE_KWARGS:
        value = outputs.get(key) if hasattr(outputs, "get") else getattr(outputs, key, None)
        if value is not None:
            return value
    return None


def generate_supports_prefill_chunk() -> bool:
    """Whether ``generate`` accepts ``prefill_chunk_size`` (chunked prefill inside generate)."""
    return hasattr(transformers.GenerationConfig(), "prefill_chunk_size")


# ---------------------------------------------------------------------------------- masks

def padding_mask_function(batch_size: int | None = None, q_length: int | None = None, kv_length: int = 0,
                          q_offset: Any = 0, kv_offset: int = 0, mask_function: Any = None,
                          attention_mask: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor | None:
    """The mask function registered next to sparsa's attention.

    sparsa's methods apply causality themselves (queries are the last ``q_length`` positions of
    the keys) and a sliding window is taken from the layer, so all the attention function
    needs is which keys are real tokens: a (batch, kv_length) bool tensor, or None when every
    key is real. A 4-D mask handed in by the caller is passed through unchanged. Versions
    differ in the other arguments (``q_length``/``q_offset`` or ``cache_position``); only
    ``kv_length``, ``kv_offset`` and ``attention_mask`` are used.
    """
    if attention_mask is None:
        return None
    if attention_mask.ndim != 2:
        return attention_mask
    mask = attention_mask.to(torch.bool)
    need = int(kv_length) + int(kv_offset)
    if mask.shape[-1] < need:
        mask = torch.nn.functional.pad(mask, (0, need - mask.shape[-1]))
    mask = mask[:, int(kv_offset):int(kv_offset) + int(kv_length)]
    if bool(mask.all()):
        return None
    return mask


def padding_mask(attention_mask: torch.Tensor | None, q_len: int, kv_len: int) -> torch.Tensor | None:
    """(batch, kv_len) bool of real keys from what the attention function received.

    Accepts None, the 2-D mask of :func:`padding_mask_function`, or a 4-D mask a caller built
    (bool: True = attend; float: 0 = attend). A 4-D mask must be causal attention restricted
    to real keys (the only kind of mask sparse methods can honour); anything else raises
    ``ValueError`` rather than being silently approximated.
    """
    if attention_mask is None:
        return None
    if attention_mask.ndim == 2:
        mask = attention_mask.to(torch.bool)
        if mask.shape[-1] != kv_len:
            mask = mask[:, -kv_len:] if mask.shape[-1] > kv_len else torch.nn.functional.pad(
                mask, (0, kv_len - mask.shape[-1]), value=True)
        return None if bool(mask.all()) else mask
    if attention_mask.ndim == 4:
        allow = mask_allows(attention_mask)[..., :kv_len]
        if allow.shape[1] != 1 and not bool((allow == allow[:, :1]).all()):
            raise ValueError("attention_mask: a 4-D mask that differs across heads cannot be honoured by "
                             "sparse methods; pass a 2-D padding mask")
        allow = allow[:, 0]
        if allow.shape[-2] != q_len:
            allow = allow[:, -1:].expand(-1, q_len, -1) if allow.shape[-2] == 1 else allow
        real = allow.any(-2)
        rows = torch.arange(kv_len - q_len, kv_len, device=allow.device)[:, None]
        expected = (torch.arange(kv_len, device=allow.device)[None, :] <= rows)[None] & real[:, None, :]
        real_q = real[:, kv_len - q_len:, None]
        if allow.shape[-2] != q_len or not bool(((allow == expected) | ~real_q).all()):
            raise ValueError("attention_mask: sparse methods apply causality themselves and honour only "
                             "padding; this 4-D mask is not causal attention over the real tokens. Pass a "
                             "2-D padding mask, or keep this layer dense")
        return None if bool(real.all()) else real
    raise ValueError(f"attention_mask: expected a 2-D padding mask or a 4-D mask, got shape "
                     f"{tuple(attention_mask.shape)}")


def mask_allows(attention_mask: torch.Tensor) -> torch.Tensor:
    """A 4-D mask (bool, or additive float) as a bool tensor, True = attend."""
    if attention_mask.dtype == torch.bool:
        return attention_mask
    return attention_mask == 0
