"""sparsa's attention function for transformers' ``AttentionInterface``.

transformers calls it once per attention layer and forward with
``(module, query (B, H, q_len, D), key/value (B, Hkv, kv_len, D) after the cache update,
attention_mask, scaling=, dropout=, **kwargs)`` and expects ``(attn_output (B, q_len, H, D), None)``.

* Calls with more than one query (a prompt or a prompt chunk; also a one-token prompt) run
  the layer's prefill rule; the queries are the last ``q_len`` positions of the keys, so a
  chunk attends (sparsely) to everything cached before it. Afterwards a stateful decode
  method builds its state from the same queries and keys: a method whose ``compacts`` is
  True (H2O, SnapKV, Ada-SnapKV, StreamingLLM, Quest) builds its decoder on the compact store
  it reads (:func:`sparsa.methods.init_cache`, which runs its ``make_decoder``), and the
  layer's full keys and values are freed; other decode methods (NSA) keep ``init_decode``'s
  state next to the full cache.
* One-query calls after the prompt run the decode rule: on a compact layer the key and value
  are the new token's alone and one step of the method's cache decoder appends, attends and
  evicts; other stateful methods run ``decode_step`` on the full cache; a stateless method is
  called on the one query; dense layers attend to the whole cache.
* Padding: the mask function registered next to this function hands over which keys are real
  tokens. Sparse rules run per batch row on that row's real tokens only, so sparse patterns
  and budgets are computed on real tokens (left padding, right padding and holes all reduce
  to this); output rows of padding queries are zero. Dense layers use the mask directly.
"""
from __future__ import annotations

import inspect
import math
import weakref
from typing import Any, Callable

import torch
import torch.nn.functional as F

from ...methods.base import AttentionStats, DecodeMethod, Method, decode_stats
from ...methods.compact import init_cache
from ...ops.dense.reference import causal_pairs
from . import compat
from .cache import LayerState, SparsaCache, cache_for
from .overrides import LayerPlan

_ROW_CHUNK = 1024                 # query rows per chunk of a windowed dense layer (at most)
_ROW_CHUNK_ELEMENTS = 1 << 25     # fp32 scores per chunk of the soft-capped path
_MASK_CHUNK_ELEMENTS = 1 << 28    # bool mask entries per chunk of the SDPA path
_TORCH_HAS_GQA = tuple(int(x) for x in torch.__version__.split(".")[:2]) >= (2, 5)


# ------------------------------------------------------------------------------------ stats

def merge_stats(parts: list[AttentionStats], method: str, phase: str) -> AttentionStats | None:
    """One :class:`AttentionStats` for several calls (batch rows) of the same layer and phase."""
    parts = [p for p in parts if p is not None]
    if not parts:
        return None
    if len(parts) == 1:
        return parts[0]
    dense = sum(p.dense for p in parts)
    computed = sum(p.computed for p in parts)
    per_head = None
    if all(p.per_head is not None for p in parts):
        heads = parts[0].per_head.numel()
        d_h = torch.zeros(heads, dtype=torch.float64)
        c_h = torch.zeros(heads, dtype=torch.float64)
        for p in parts:
            share = p.dense / heads
            d_h += share
            c_h += share / p.per_head.double().clamp_min(1e-30)
        per_head = d_h / c_h.clamp_min(1e-30)
    return AttentionStats(method, phase, dense, computed, per_head, {"rows": len(parts)})


def _dense_stats(phase: str, q_rows: list[int], k_rows: list[int], heads: int) -> AttentionStats:
    """Stats of dense attention over rows with ``q_rows[i]`` real queries and ``k_rows[i]`` real keys."""
    if phase == "prefill":
        pairs = float(sum(causal_pairs(m, n) for m, n in zip(q_rows, k_rows) if m > 0)) * heads
    else:
        pairs = float(sum(n for m, n in zip(q_rows, k_rows) if m > 0)) * heads
    per_head = torch.ones(heads, dtype=torch.float64)
    return AttentionStats("dense", phase, pairs, pairs, per_head)


class StatsRecorder:
    """The latest :class:`AttentionStats` of each (layer, phase).

    Entries may be recorded as zero-argument callables and are built when read, so that
    recording never waits for the device.
    """

    def __init__(self) -> None:
        self._latest: dict[tuple[int, str], AttentionStats | Callable[[], AttentionStats | None]] = {}

    def record(self, layer: int, phase: str, stats: AttentionStats | Callable[[], AttentionStats | None] | None
               ) -> None:
        if stats is not None:
            self._latest[(layer, phase)] = stats

    @property
    def latest(self) -> dict[tuple[int, str], AttentionStats]:
        out = {}
        for key, value in self._latest.items():
            stats = value() if callable(value) else value
            if stats is not None:
                self._latest[key] = stats
                out[key] = stats
        return out

    def clear(self) -> None:
        self._latest.clear()


# ------------------------------------------------------------------------------------ dense

def dense_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, *,
                    padding: torch.Tensor | None = None, mask4d: torch.Tensor | None = None,
                    window: int | None = None, softcap: float | None = None) -> torch.Tensor:
    """The model's own attention: causal (bottom-right aligned), optional window, padding, soft-cap.

    q: (B, H, Lq, D); k, v: (B, Hkv, Lk, D); padding (B, Lk) bool, True = real token; mask4d a
    caller-built (B, 1|H, Lq, >=Lk) mask used instead of causal/window/padding. Query rows that
    see no key (padding) return zeros. Returns (B, H, Lq, D) in q's dtype.

    Masks are built per chunk of query rows over the keys those rows can reach (the window's
    span for windowed layers), so memory stays bounded on long prompts.
    """
    b, h, lq, d = q.shape
    lk = k.shape[2]
    if mask4d is not None:
        return _attend(q, k, v, compat.mask_allows(mask4d[..., :lk]).to(q.device), scale, softcap)
    if padding is None and window is None and softcap is None and (lq == lk or lq == 1):
        return _sdpa(q, k, v, None, scale, causal=lq > 1)  # plain causal (or a single query)
    reach = lk if window is None else min(lk, window + _ROW_CHUNK)
    budget = _ROW_CHUNK_ELEMENTS if softcap is not None else _MASK_CHUNK_ELEMENTS
    step = max(1, min(lq, budget // max(1, b * h * reach)))
    if window is not None:
        step = min(step, _ROW_CHUNK)
    out = torch.empty_like(q)
    for s in range(0, lq, step):
        e = min(lq, s + step)
        first, last = lk - lq + s, lk - lq + e          # absolute positions of rows s..e-1
        lo = 0 if window is None else max(0, first - window + 1)
        rows = torch.arange(first, last, device=q.device)[:, None]
        cols = torch.arange(lo, last, device=q.device)[None, :]
        allow = cols <= rows
        if window is not None:
            allow = allow & (cols > rows - window)
        allow = allow[None, None]
        if padding is not None:
            allow = allow & padding[:, lo:last].to(q.device)[:, None, None, :]
        out[:, :, s:e] = _attend(q[:, :, s:e], k[:, :, lo:last], v[:, :, lo:last], allow, scale, softcap)
    return out


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allow: torch.Tensor, scale: float,
            softcap: float | None) -> torch.Tensor:
    """Attention under a bool mask (B|1, 1|H, Lq, Lk); rows with nothing allowed give zeros."""
    if softcap is not None:
        return _softcapped(q, k, v, scale, softcap, allow)
    seen = allow.any(-1, keepdim=True)
    out = _sdpa(q, k, v, allow | ~seen, scale, causal=False)
    return out.masked_fill(~seen, 0.0)


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float,
          causal: bool) -> torch.Tensor:
    g = q.shape[1] // k.shape[1]
    if g > 1 and not _TORCH_HAS_GQA:
        k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
    kwargs: dict[str, Any] = {"enable_gqa": True} if g > 1 and _TORCH_HAS_GQA else {}
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=scale, **kwargs)


def _softcapped(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, softcap: float,
                allow: torch.Tensor) -> torch.Tensor:
    """Eager attention with ``softcap * tanh(scores / softcap)`` (Gemma2) in fp32."""
    g = q.shape[1] // k.shape[1]
    ct = torch.float64 if q.dtype == torch.float64 else torch.float32
    sc = torch.matmul(q.to(ct), k.to(ct).repeat_interleave(g, 1).transpose(-1, -2)) * scale
    sc = (torch.tanh(sc / softcap) * softcap).masked_fill(~allow, float("-inf"))
    p = torch.softmax(sc, dim=-1).nan_to_num(0.0)
    return torch.matmul(p, v.to(ct).repeat_interleave(g, 1)).to(q.dtype)


# ------------------------------------------------------------------------------------ row handling

def _positions(mask: torch.Tensor, device: torch.device) -> slice | torch.Tensor:
    """The True positions of a host (L,) bool mask: a slice when they are contiguous (left or
    right padding), else an index tensor on ``device``."""
    idx = mask.nonzero().flatten()
    first, last = int(idx[0]), int(idx[-1])
    if last - first + 1 == idx.numel():
        return slice(first, last + 1)
    return idx.to(device)


def _take(x: torch.Tensor, where: slice | torch.Tensor) -> torch.Tensor:
    """x (1, heads, L, D) at positions ``where`` (from :func:`_positions`) along dim 2."""
    return x[:, :, where]


def _row_positions(padding: torch.Tensor, lq: int, lk: int,
                   device: torch.device) -> list[tuple[slice | torch.Tensor, slice | torch.Tensor] | None]:
    """Per batch row, (real query positions, real key positions) as from :func:`_positions`, or
    None for a row with no real query; padding (B, L_k) bool, True = real. The mask is read back
    once, so the rows are split without a device synchronisation per row."""
    host = padding.cpu()
    out: list[tuple[slice | torch.Tensor, slice | torch.Tensor] | None] = []
    for b in range(host.shape[0]):
        real_k = host[b]
        real_q = real_k[lk - lq:]
        out.append(None if not bool(real_q.any()) else (_positions(real_q, device), _positions(real_k, device)))
    return out


def _per_row(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, padding: torch.Tensor,
             build: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], Any]) -> list[Any]:
    """``build(q_b, k_b, v_b)`` on each batch row's real tokens (padding (B, L_k) bool, True =
    real); None for a row with no real query. q (B, H, L_q, D), k/v (B, H_kv, L_k, D)."""
    rows: list[Any] = []
    for b, where in enumerate(_row_positions(padding, q.shape[2], k.shape[2], k.device)):
        if where is None:
            rows.append(None)
            continue
        wq, wk = where
        rows.append(build(_take(q[b:b + 1], wq), _take(k[b:b + 1], wk), _take(v[b:b + 1], wk)))
    return rows


def _accepts_scale(fn: Callable[..., Any]) -> bool:
    try:
        return "scale" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def _init_decode(m: DecodeMethod, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> Any:
    if _accepts_scale(m.init_decode):
        return m.init_decode(q, k, v, scale=scale)
    return m.init_decode(q, k, v)


def _step_stats(method: str, step: Any) -> AttentionStats:
    """AttentionStats of one compact decode step from its :class:`~sparsa.methods.StepStats`."""
    read = step.tokens_read.cpu()                                  # (B, H)
    context = step.context.double()                                # (B,)
    per_head = float(context.sum()) / read.sum(0).clamp_min(1.0)
    return AttentionStats(method, "decode", float(context.sum()) * read.shape[1], float(read.sum()), per_head,
                          {**step.info, "cache_bytes": step.cache_bytes})


def _pack_rows(x: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """x (B, heads, L, D) with each row's positions reordered by ``order`` (B, n) along dim 2."""
    b, h, _, d = x.shape
    return x.gather(2, order[:, None, :, None].to(x.device).expand(b, h, order.shape[1], d))


def _reject_packed(position_ids: torch.Tensor | None) -> None:
    """Packed sequences (positions restarting inside a row, no mask) would let sparse rules cross
    sequence boundaries; transformers expresses them only through its own mask functions."""
    if isinstance(position_ids, torch.Tensor) and position_ids.ndim == 2 and position_ids.shape[-1] > 1:
        if bool((position_ids.diff(dim=-1) != 1).any()):
            raise ValueError("position_ids: packed sequences (positions restarting inside a row) are not "
                             "supported by sparse methods; pass one sequence per row with an attention mask")


# ------------------------------------------------------------------------------------ the function

class SparsaAttention:
    """Callable registered with ``AttentionInterface``; routes each call by the layer's plan."""

    def __init__(self, plans: list[LayerPlan], *, backend: str | None = None,
                 stats: StatsRecorder | None = None) -> None:
        self.plans = plans
        self.backend = backend
        self.stats = stats if stats is not None else StatsRecorder()
        self.__name__ = "sparsa_attention"
        self._checked_mask: Any = None      # weak reference to the last mask whose new tokens were checked

    def __call__(self, module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                 attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                 **kwargs: Any) -> tuple[torch.Tensor, None]:
        layer = getattr(module, "layer_idx", None)
        if not isinstance(layer, int) or not 0 <= layer < len(self.plans):
            raise ValueError(f"sparsa attention: module {type(module).__name__} has layer_idx {layer!r}, "
                             f"outside the {len(self.plans)} layers sparsa.apply planned for")
        cache = cache_for(layer, key)
        if dropout:
            raise ValueError(f"dropout: sparsa attention has no attention dropout (got {dropout}); "
                             "call model.eval() or set the config's attention_dropout to 0")
        plan = self.plans[layer]
        scale = float(scaling) if scaling is not None else 1.0 / math.sqrt(query.shape[-1])
        softcap = kwargs.get("softcap")
        window = plan.window if plan.window is not None else kwargs.get("sliding_window")
        lq, lk = query.shape[2], key.shape[2]
        if lq == 1 and cache is not None:
            state = cache.sparsa_states.get(layer)
            if state is not None and state.compact:
                out = self._compact_step(plan, cache, state, query, key, value, attention_mask, scale)
                return out.transpose(1, 2).contiguous(), None
        phase = "decode" if lq == 1 and lk > 1 else "prefill"
        method = plan.prefill if phase == "prefill" else plan.decode
        if window is not None or method is None:
            out = self._dense(layer, phase, query, key, value, attention_mask, scale, window, softcap)
            if phase == "prefill" and plan.stateful and window is None:
                self._init_state(plan, cache, query, key, value, compat.padding_mask(attention_mask, lq, lk), scale)
            return out.transpose(1, 2).contiguous(), None
        if softcap is not None:
            raise ValueError(f"layer {layer}: the model soft-caps attention scores (softcap={softcap}), which "
                             f"{method.name} cannot apply; run the layer densely (layers={{{layer}: None}})")
        padding = compat.padding_mask(attention_mask, lq, lk)
        if phase == "prefill" and padding is None and lq == lk and lq > 1:
            _reject_packed(kwargs.get("position_ids"))
        if phase == "prefill":
            out = self._sparse_call(layer, phase, method.for_prefill(), query, key, value, padding, scale)
            if plan.stateful:
                self._init_state(plan, cache, query, key, value, padding, scale)
        elif isinstance(method, DecodeMethod):
            out = self._decode_step(plan, method, cache, query, key, value, padding, scale)
        else:
            out = self._sparse_call(layer, phase, method, query, key, value, padding, scale)
        return out.transpose(1, 2).contiguous(), None

    # -- dense ------------------------------------------------------------------------------------

    def _dense(self, layer: int, phase: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               attention_mask: torch.Tensor | None, scale: float, window: int | None,
               softcap: float | None) -> torch.Tensor:
        lq, lk = q.shape[2], k.shape[2]
        mask4d = attention_mask if attention_mask is not None and attention_mask.ndim == 4 else None
        padding = None if mask4d is not None else compat.padding_mask(attention_mask, lq, lk)
        out = dense_attention(q, k, v, scale, padding=padding, mask4d=mask4d, window=window, softcap=softcap)
        heads, batch = q.shape[1], q.shape[0]
        k_real = None if padding is None else padding.sum(-1)
        q_real = None if padding is None else padding[:, lk - lq:].sum(-1)

        def stats() -> AttentionStats:
            k_rows = [lk] * batch if k_real is None else k_real.tolist()
            q_rows = [lq] * batch if q_real is None else q_real.tolist()
            if window is not None and phase == "decode":
                k_rows = [min(n, window) for n in k_rows]
            return _dense_stats(phase, q_rows, k_rows, heads)

        self.stats.record(layer, phase, stats)
        return out

    # -- sparse -----------------------------------------------------------------------------------

    def _sparse_call(self, layer: int, phase: str, method: Method, q: torch.Tensor, k: torch.Tensor,
                     v: torch.Tensor, padding: torch.Tensor | None, scale: float) -> torch.Tensor:
        """``method(q, k, v)`` on every row's real tokens."""
        if padding is None:
            out, stats = method(q, k, v, scale=scale, backend=self.backend)
            self.stats.record(layer, phase, stats)
            return out
        out = torch.zeros_like(q)
        parts = []
        for b, where in enumerate(_row_positions(padding, q.shape[2], k.shape[2], q.device)):
            if where is None:
                continue
            wq, wk = where
            ob, stats = method(_take(q[b:b + 1], wq), _take(k[b:b + 1], wk), _take(v[b:b + 1], wk),
                               scale=scale, backend=self.backend)
            out[b:b + 1, :, wq] = ob
            parts.append(stats)
        self.stats.record(layer, phase, merge_stats(parts, method.name, phase))
        return out

    # -- decode state -----------------------------------------------------------------------------

    def _init_state(self, plan: LayerPlan, cache: SparsaCache | None, q: torch.Tensor, k: torch.Tensor,
                    v: torch.Tensor, padding: torch.Tensor | None, scale: float) -> None:
        """Build the layer's decode state from a prompt (chunk) whose keys are the whole cache."""
        if cache is None:
            return  # no sparsa cache: a later decode step raises a clear error
        m = plan.decode
        assert isinstance(m, DecodeMethod)
        lk = k.shape[2]
        if m.compacts:
            state = LayerState(m.name, lk, store=m.decode_store)
            if cache.defer_release:
                state.pending = (q, None if padding is None else padding.clone(), scale)
                cache.sparsa_states[plan.layer] = state
            else:
                self._build_compact(m, state, q, k, v, padding, scale)
                cache.sparsa_states[plan.layer] = state
                cache.release(plan.layer)
            return
        if padding is None:
            state = LayerState(m.name, lk, batched=_init_decode(m, q, k, v, scale))
        else:
            rows = _per_row(q, k, v, padding, lambda qb, kb, vb: _init_decode(m, qb, kb, vb, scale))
            state = LayerState(m.name, lk, rows=rows, padding=padding.clone())
        cache.sparsa_states[plan.layer] = state

    def _decode_step(self, plan: LayerPlan, m: DecodeMethod, cache: SparsaCache | None, q: torch.Tensor,
                     k: torch.Tensor, v: torch.Tensor, padding: torch.Tensor | None, scale: float) -> torch.Tensor:
        layer, lk = plan.layer, k.shape[2]
        state = cache.sparsa_states.get(layer) if cache is not None else None
        if state is None:
            where = "the cache is not a SparsaCache" if cache is None else "the prompt was not run through it"
            raise RuntimeError(
                f"layer {layer}: decode method {m.name!r} needs the state built from the prompt, but {where}. "
                "Run the prompt and the decode steps through the model while sparsa is applied, with the "
                "cache sparsa.apply provides (generate() and model() use one when no cache is passed; "
                "or pass cache=handle.new_cache())")
        if state.length + 1 != lk:
            raise RuntimeError(f"layer {layer}: the cache holds {lk} tokens but the {m.name} state was built for "
                               f"{state.length} plus one new token; decode one token per call after the prompt")
        qt = q[:, :, 0]
        if state.rows is None:
            if padding is not None:
                raise ValueError("attention_mask: padding appeared after an unpadded prompt; pass the same "
                                 "attention mask (extended by ones) that the prompt used")
            out, new, read = m.decode_step(qt, k, v, state.batched, scale=scale)
            state.batched, state.length = new, lk
            self.stats.record(layer, "decode", decode_stats(m.name, read, lk))
            return out[:, :, None]
        prev = state.padding
        if padding is None:
            padding = torch.cat([prev, prev.new_ones(prev.shape[0], 1)], dim=1)
        elif not torch.equal(padding[:, :-1].to(prev.device), prev):
            raise ValueError("attention_mask: the padding of earlier tokens changed since the prompt")
        out = torch.zeros_like(q)
        parts = []
        host = padding.cpu()  # one read back per step, not one per row
        for b in range(q.shape[0]):
            if not bool(host[b, -1]):
                continue  # a padding step: the row's output is not used
            if state.rows[b] is None:
                raise RuntimeError(f"layer {layer}: batch row {b} had no real token in the last prompt chunk, so "
                                   f"{m.name} has no state for it; end every row's prompt in the last chunk")
            real = _positions(host[b], k.device)
            kb, vb = _take(k[b:b + 1], real), _take(v[b:b + 1], real)
            ob, new, read = m.decode_step(qt[b:b + 1], kb, vb, state.rows[b], scale=scale)
            state.rows[b] = new
            out[b:b + 1, :, 0] = ob
            parts.append(decode_stats(m.name, read, kb.shape[2]))
        state.padding, state.length = padding.clone(), lk
        self.stats.record(layer, "decode", merge_stats(parts, m.name, "decode"))
        return out

    # -- compact decode -----------------------------------------------------------------------------

    def _build_compact(self, m: DecodeMethod, state: LayerState, q: torch.Tensor, k: torch.Tensor,
                       v: torch.Tensor, padding: torch.Tensor | None, scale: float) -> None:
        """Build the compact store of a layer from the last prompt call: q (B, H, Lq, D) its
        queries, k, v (B, Hkv, Lk, D) the whole cache, padding (B, Lk) bool real tokens or None.

        Unpadded batches are planned in one call. In a padded batch whose call covers the whole
        cache, each row's real tokens are packed to the front and every sequence is planned on
        its own tokens (``init_cache`` with per-sequence lengths); a padded prompt chunk gets one
        decoder per row."""
        lq, lk = q.shape[2], k.shape[2]
        if padding is None:
            state.decoder = init_cache(m, q, k, v, scale=scale, backend=self.backend)
            return
        padding = padding.to(k.device)
        lengths = padding.sum(-1)
        if lq == lk and bool((lengths > 0).all()):
            order = torch.argsort((~padding).to(torch.int8), dim=-1, stable=True)[:, :int(lengths.max())]
            state.decoder = init_cache(m, _pack_rows(q, order), _pack_rows(k, order), _pack_rows(v, order),
                                       lengths=lengths, scale=scale, backend=self.backend)
            return
        state.row_decoders = _per_row(q, k, v, padding, lambda qb, kb, vb: init_cache(
            m, qb, kb, vb, scale=scale, backend=self.backend))

    def _check_new_tokens(self, attention_mask: torch.Tensor | None, state: LayerState) -> None:
        """Refuse a decode step whose new token is padding for some row: a compact store appends
        the token of every row. Checked once per mask object (one host read per forward)."""
        if attention_mask is None:
            return
        if self._checked_mask is not None and self._checked_mask() is attention_mask:
            return
        if attention_mask.ndim == 2:
            new = attention_mask[:, -1]
        elif attention_mask.ndim == 4:
            allow = compat.mask_allows(attention_mask)
            col = state.length - 1 if allow.shape[-1] >= state.length else allow.shape[-1] - 1
            new = allow[:, :, -1, col]
        else:
            raise ValueError(f"attention_mask: expected a 2-D padding mask or a 4-D mask, got shape "
                             f"{tuple(attention_mask.shape)}")
        if not bool(new.to(torch.bool).all()):
            state.length -= 1                      # update() counted the refused token
            raise ValueError("attention_mask: a decode step's new token is padding for some row; compact decode "
                             "caches store every row's new token, so decode steps must be real tokens (extend "
                             "the prompt's mask with ones)")
        self._checked_mask = weakref.ref(attention_mask)

    def _compact_step(self, plan: LayerPlan, cache: SparsaCache, state: LayerState, q: torch.Tensor,
                      k: torch.Tensor, v: torch.Tensor, attention_mask: torch.Tensor | None,
                      scale: float) -> torch.Tensor:
        """One decode step on a compact layer: q (B, H, 1, D); k, v (B, Hkv, 1, D) the new token
        (not in the full cache). Builds the store first if the prompt left it pending."""
        layer = plan.layer
        m = plan.decode
        assert isinstance(m, DecodeMethod)
        if k.shape[2] != 1:
            raise RuntimeError(f"layer {layer}: a compact decode step takes the new token alone, got "
                               f"{k.shape[2]} keys; pass the SparsaCache to every forward")
        if state.pending is not None:
            pq, ppad, pscale = state.pending
            keys, values = compat.layer_kv(cache, layer)
            if keys is None or values is None or keys.shape[2] != state.length - 1:
                raise RuntimeError(f"layer {layer}: the cache holds no prompt of {state.length - 1} tokens to "
                                   f"build the {m.name} store from")
            self._build_compact(m, state, pq, keys, values, ppad, pscale)
            state.pending = None
            del keys, values, pq
            cache.release(layer)
        self._check_new_tokens(attention_mask, state)
        qt, kt, vt = q[:, :, 0], k[:, :, 0], v[:, :, 0]
        if state.decoder is not None:
            out, step = state.decoder.step(qt, kt, vt)
            self.stats.record(layer, "decode", lambda: _step_stats(m.name, step))
            return out[:, :, None]
        assert state.row_decoders is not None
        outs, steps = [], []
        for b, dec in enumerate(state.row_decoders):
            if dec is None:
                raise RuntimeError(f"layer {layer}: batch row {b} had no real token in the last prompt chunk, so "
                                   f"{m.name} has no state for it; end every row's prompt in the last chunk")
            ob, st = dec.step(qt[b:b + 1], kt[b:b + 1], vt[b:b + 1])
            outs.append(ob)
            steps.append(st)
        self.stats.record(layer, "decode", lambda: merge_stats([_step_stats(m.name, st) for st in steps],
                                                               m.name, "decode"))
        return torch.cat(outs, 0)[:, :, None]
