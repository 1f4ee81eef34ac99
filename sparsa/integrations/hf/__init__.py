"""HuggingFace transformers integration: sparse attention in ``model()`` and ``generate()``.

``sparsa.apply(model, prefill=..., decode=...)`` registers sparsa's attention function (and
its padding-mask function) with transformers under a unique name, switches the model to it
and returns a handle that restores everything (also as a context manager). No transformers
source is patched. See :func:`apply` for the per-phase and per-layer rules.

Supported families: Llama, Mistral, Qwen2, Qwen3, Gemma2, Gemma3 (text). Supported
transformers versions: see :data:`compat.MIN_VERSION` / :data:`compat.MAX_VERSION`.

Chunked prefill of a long prompt: either ``sparsa.apply(..., prefill_chunk=8192)`` and a plain
``model.generate(input_ids)``, or by hand::

    handle = sparsa.apply(model, prefill="vertical_slash", decode="quest")
    res = sparsa.integrations.hf.chunked_prefill(model, input_ids[:, :-1], chunk=8192)
    out = model.generate(input_ids, cache=res.cache, max_new_tokens=64)  # past_key_values= in 4.x

(``generate`` runs the prompt tokens the cache does not hold yet, here the last one, which
then takes the decode rule.) Every chunk is a forward whose queries are the last positions of
the cached keys, so a prefill method attends sparsely to everything before it.

Decode methods with a compact store (H2O, SnapKV, Ada-SnapKV, StreamingLLM, Quest) make the
cache hold only what they keep once decoding starts; :meth:`SparsaCache.layer_nbytes` and
:meth:`SparsaCache.layer_tokens` report it.
"""
from .apply import PrefillResult, SparsaHandle, apply, chunked_prefill
from .cache import LayerState, SparsaCache
from .compat import MAX_VERSION, MIN_VERSION, check_version
from .overrides import ARCHITECTURES, AUTO, LayerPlan

__all__ = ["ARCHITECTURES", "AUTO", "LayerPlan", "LayerState", "MAX_VERSION", "MIN_VERSION", "PrefillResult",
           "SparsaCache", "SparsaHandle", "apply", "check_version", "chunked_prefill"]
