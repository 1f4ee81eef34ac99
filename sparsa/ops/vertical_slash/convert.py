"""Index conversion for the vertical-slash kernel: diagonals -> key tiles, columns -> lists.

The kernel works per query block of ``block_q`` (64 or 128) rows and per tile of
``VS_TILE`` = 64 keys. For query block ``qb`` (rows at positions ``p0 .. p0 + block_q - 1``),
diagonal ``o`` covers the keys ``p0 - o .. p0 + block_q - 1 - o``. Walking the diagonals from
the largest offset to the smallest (key ranges in ascending order), a greedy pass covers the
ranges with disjoint 64-key tiles that may start anywhere (not only at multiples of 64): a
range already covered up to ``covered`` is skipped, otherwise tiles start at
``max(range start, covered)`` until the range is covered. Nearby diagonals share tiles; an
isolated diagonal costs ``block_q / 64`` tiles. This is MInference's block construction.

The greedy tiles of a block are disjoint and start before its last visible key, so a block
never has more tiles than a dense causal pass over it (``ceil(end / 64)``): lines scattered
over the whole context cost at most a dense pass, every tile of it partial.

The tiles cover more pairs than the diagonals. With ``exact=True`` (the default) the kernel
attends only the exact pairs: inside a tile, pair ``(p, c)`` counts only if ``p - c`` is a
chosen offset. That test reads a bit-packed table of the chosen offsets: per row, three
32-bit words give the 64-bit window of the offsets the row meets in the tile, then one
shift and mask per element. The vertical columns are attended in a second pass over the
head's sorted column list (the columns a query block can see causally); inside tiles those
columns are masked out, so no pair is counted twice. Attention then covers exactly the union
of the columns and diagonals, as
:func:`~sparsa.ops.vertical_slash.reference.vertical_slash_attention_ref` does.

To keep masking off the common path, each tile is classified when it is emitted:

* clean: wholly below the block's first row (no causal mask), no vertical column inside, and
  (exact only) every offset it spans is a chosen diagonal: no mask at all. Clean tiles are
  written from the left of the row, ``tiles[..., :clean_count]``.
* masked: causal and column masks; with ``exact`` and an offset it spans not chosen, the
  offset bit test instead of the causal test (flag ``GATHER_BIT`` set in the code; negative
  offsets have no bit, so it is causal too). Written from the right of the row,
  ``tiles[..., width - masked_count:]``.

``exact=False`` attends every causal pair of the tiles (minus the vertical columns) plus the
columns: MInference's superset semantics; :func:`vertical_slash_superset_ref` is its
reference and :func:`superset_pairs` its pair count. When the tiles of a superset layout
would compute at least ``DENSE_ROUTE_FRACTION`` of a dense causal pass
(:func:`superset_routes_dense`), the dispatch runs dense causal attention instead, which is
the superset of every layout.

All tensors here live on the inputs' device. The conversion runs as a Triton kernel on the
Triton path (:func:`prepare_vertical_slash` with ``use_triton=True``; it walks runs of
consecutive diagonals, so a contiguous band costs one step per tile) and as a loop of
vectorised torch ops over the diagonals otherwise: :func:`slash_tiles_reference`, the spec
the kernel is tested against (the greedy is sequential along the diagonals, so torch can only
vectorise it across heads and query blocks).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .._shared.masked import masked_attention
from .._shared.masks import causal_pairs, query_positions
from .runs import DIAG_PAD, GATHER_BIT, START_MASK, VS_TILE, slash_runs, tiles_width, tiles_width_runs

BLOCK_Q_CHOICES = (64, 128)
DENSE_ROUTE_FRACTION = 0.7


def default_block_q(exact: bool) -> int:
    """Query rows per program: 64 with exact semantics, 128 with superset semantics (the faster
    of each; benchmarks/NOTES.md)."""
    return 64 if exact else 128


def _check_range(name: str, indices: torch.Tensor, kv_len: int) -> None:
    if indices.dtype not in (torch.int16, torch.int32, torch.int64):
        raise TypeError(f"{name}: dtype must be an integer type, got {indices.dtype}")
    if indices.numel() and (int(indices.min()) < -1 or int(indices.max()) >= kv_len):
        raise ValueError(f"{name}: entries must be -1 (unused) or in [0, {kv_len}), "
                         f"got range [{int(indices.min())}, {int(indices.max())}]")


def _sorted_unique(indices: torch.Tensor, descending: bool, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort each row, drop repeats and -1 entries; pad the tail with ``pad``.

    Returns (sorted int32 (B, Hx, max(1, N)), valid count int32 (B, Hx)).
    """
    x = indices.to(torch.int64)
    if x.shape[-1] == 0:
        x = torch.full((*x.shape[:-1], 1), -1, dtype=torch.int64, device=x.device)
    big = torch.iinfo(torch.int64).max
    # invalid entries go to the end of the order
    key = torch.where(x < 0, torch.full_like(x, -1 if descending else big), x)
    key, _ = key.sort(dim=-1, descending=descending)
    valid = (key >= 0) & (key != big)
    dup = torch.zeros_like(valid)
    dup[..., 1:] = key[..., 1:] == key[..., :-1]
    valid &= ~dup
    fill = -1 if descending else big
    key = torch.where(valid, key, torch.full_like(key, fill))
    key, _ = key.sort(dim=-1, descending=descending)
    count = valid.sum(-1, dtype=torch.int32)
    key = torch.where(torch.arange(key.shape[-1], device=key.device) < count[..., None], key,
                      torch.full_like(key, pad))
    return key.to(torch.int32).contiguous(), count


def _membership(indices: torch.Tensor, count: torch.Tensor, size: int, before: int = 0,
                after: int = 0) -> torch.Tensor:
    """(B, Hx, N) indices with ``count`` valid leading entries -> uint8 table
    (B, Hx, before + size + after); entry ``before + i`` is 1 when ``i`` is listed."""
    b, hx, n = indices.shape
    total = before + size + after
    table = torch.zeros(b, hx, total + 1, dtype=torch.uint8, device=indices.device)
    idx = indices.to(torch.int64) + before
    idx = torch.where(torch.arange(n, device=idx.device) < count[..., None].to(torch.int64), idx,
                      torch.full_like(idx, total))
    table.scatter_(-1, idx, 1)
    return table[..., :total].contiguous()


def _prefix(table: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """(B, Hx, L) 0/1 table -> (B, Hx, L + 1) running counts of entries below each index
    (int32), or with ``weights`` (L,) running sums of the weights of those entries (int64)."""
    if weights is None:
        run = table.to(torch.int32).cumsum(-1, dtype=torch.int32)
    else:
        run = (table.to(torch.int64) * weights).cumsum(-1)
    return torch.nn.functional.pad(run, (1, 0)).contiguous()


def offset_bits_words(kv_len: int) -> int:
    """32-bit words of the packed offset table: bits ``DIAG_PAD + o`` for offsets
    ``-DIAG_PAD <= o`` up to past ``kv_len + 128`` (the reach of rows past the last query)."""
    return (DIAG_PAD + kv_len + 2 * max(BLOCK_Q_CHOICES) + 31) // 32 + 3


def pack_bits(table: torch.Tensor, words: int) -> torch.Tensor:
    """(B, Hx, n) 0/1 table -> (B, Hx, words) int32, bit ``i`` in bit ``i % 32`` of word ``i // 32``
    (entries past ``n`` are 0)."""
    b, hx, n = table.shape
    if n > words * 32:
        raise ValueError(f"words: {words} words hold {words * 32} bits, fewer than the table's {n}")
    bits = torch.zeros(b, hx, words * 32, dtype=torch.int64, device=table.device)
    bits[..., :n] = table.to(torch.int64)
    weights = torch.ones(32, dtype=torch.int64, device=table.device) << torch.arange(32, device=table.device)
    packed = (bits.view(b, hx, words, 32) * weights).sum(-1)
    # to int32 with the same 32 bits
    return torch.where(packed >= 1 << 31, packed - (1 << 32), packed).to(torch.int32).contiguous()


@dataclass
class VSLayout:
    """What the vertical-slash kernel reads (Hx = heads or kv_heads, NQ = ceil(q_len / block_q)).

    slash: (B, Hx, NS) int32 offsets sorted descending, unique, -1 padded; slash_count (B, Hx).
    columns: (B, Hx, NV) int32 columns sorted ascending, unique, padded with kv_len;
        column_count (B, Hx); block_columns (B, Hx, NQ): columns each query block can see;
        block_columns_below (B, Hx, NQ): columns at or before the block's first row.
    tiles: (B, Hx, NQ, width) int32 tile codes (key start, plus ``GATHER_BIT`` when the offset
        bit test is needed): clean tiles in ``[:clean_count]``, masked ones in
        ``[width - masked_count:]``, -1 elsewhere; clean_count, masked_count (B, Hx, NQ).
    tile_pairs: superset layouts only, (B, Hx, NQ) int64 causal pairs inside each block's
        tiles, vertical columns excluded; None for exact layouts.
    diag_table: (B, Hx, DIAG_PAD + kv_len + block_q) uint8, entry ``DIAG_PAD + o`` = 1 for a
        chosen offset ``o``; column_table (B, Hx, kv_len) uint8 membership of columns.
    diag_bits: (B, Hx, :func:`offset_bits_words`) int32, ``diag_table`` packed 32 bits a word.
    diag_prefix, column_prefix: (B, Hx, kv_len + 1) int32 running counts of the two tables.
    """

    q_len: int
    kv_len: int
    block_q: int
    exact: bool
    slash: torch.Tensor
    slash_count: torch.Tensor
    columns: torch.Tensor
    column_count: torch.Tensor
    block_columns: torch.Tensor
    block_columns_below: torch.Tensor
    tiles: torch.Tensor
    clean_count: torch.Tensor
    masked_count: torch.Tensor
    diag_table: torch.Tensor
    column_table: torch.Tensor
    diag_prefix: torch.Tensor
    column_prefix: torch.Tensor
    diag_bits: torch.Tensor
    tile_pairs: torch.Tensor | None = None

    @property
    def n_query_blocks(self) -> int:
        return self.clean_count.shape[-1]

    @property
    def tile_count(self) -> torch.Tensor:
        """(B, Hx, NQ) tiles per query block."""
        return self.clean_count + self.masked_count

    @property
    def offset_table(self) -> torch.Tensor:
        """(B, Hx, kv_len) uint8 membership of the chosen offsets."""
        return self.diag_table[..., DIAG_PAD:DIAG_PAD + self.kv_len]

    def tile_starts(self) -> torch.Tensor:
        """(B, Hx, NQ, width) int64 key start of every tile, ascending, -1 padded."""
        t = self.tiles.to(torch.int64)
        start = torch.where(t >= 0, t & START_MASK, torch.full_like(t, torch.iinfo(torch.int64).max))
        start, _ = start.sort(dim=-1)
        return torch.where(start == torch.iinfo(torch.int64).max, torch.full_like(start, -1), start)


def _block_bounds(q_len: int, kv_len: int, block_q: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor,
                                                                                        torch.Tensor]:
    """(p0, end, last) int64 (NQ,): first row's position, one past the last visible position,
    last row's position of every query block."""
    nq = (q_len + block_q - 1) // block_q
    p0 = torch.arange(nq, device=device, dtype=torch.int64) * block_q + (kv_len - q_len)
    end = torch.clamp(p0 + block_q, max=kv_len)
    return p0, end, end - 1


def _tile_superset_pairs(s: torch.Tensor, p0: torch.Tensor, last: torch.Tensor, kv_len: int,
                         cpre: torch.Tensor, cpos: torch.Tensor) -> torch.Tensor:
    """Causal pairs of the tile at key ``s`` (int64, broadcast over (B, Hx, NQ)), its vertical
    columns excluded; ``cpre``/``cpos``: (B, Hx, kv_len + 1) running column counts / position
    sums. The formulas the conversion kernel uses."""
    nrows = last - p0 + 1

    def keys_below(x: torch.Tensor) -> torch.Tensor:       # pairs of all keys < x
        u = torch.clamp(x - p0 - 1, min=torch.zeros_like(nrows), max=nrows - 1)
        return nrows * torch.minimum(x, p0 + 1) + u * nrows - u * (u + 1) // 2

    def columns_below(x: torch.Tensor) -> torch.Tensor:    # pairs of the columns < x
        y = torch.minimum(torch.maximum(x, p0 + 1), last + 1)
        c_first = cpre.gather(-1, (p0 + 1).expand_as(x))
        s_first = cpos.gather(-1, (p0 + 1).expand_as(x))
        return (nrows * cpre.gather(-1, torch.minimum(x, p0 + 1))
                + (last + 1) * (cpre.gather(-1, y) - c_first) - (cpos.gather(-1, y) - s_first))

    hi = torch.clamp(s + VS_TILE, max=kv_len)
    return keys_below(hi) - keys_below(s) - (columns_below(hi) - columns_below(s))


def slash_tiles_reference(slash: torch.Tensor, slash_count: torch.Tensor, diag_prefix: torch.Tensor,
                          column_prefix: torch.Tensor, q_len: int, kv_len: int, block_q: int, exact: bool,
                          column_positions: torch.Tensor | None = None, exact_width: bool | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Greedy, classified tiles of the diagonals (the spec of the Triton conversion kernel).

    slash: (B, Hx, NS) offsets sorted descending (as from :func:`prepare_vertical_slash`);
    diag_prefix / column_prefix: (B, Hx, kv_len + 1) running counts of chosen offsets / columns;
    column_positions: (B, Hx, kv_len + 1) running sums of the column positions (needed when
    ``exact`` is False). Returns (tiles (B, Hx, NQ, width) int32, clean_count, masked_count
    (B, Hx, NQ) int32, tile_pairs (B, Hx, NQ) int64 or None when ``exact``), in the layout
    described by :class:`VSLayout`; ``exact_width`` as in
    :func:`~sparsa.ops.vertical_slash.runs.tiles_width`. Loops over the diagonals in Python,
    vectorised over batch, heads and query blocks.
    """
    if not exact and column_positions is None:
        raise ValueError("column_positions: required when exact is False")
    b, hx, ns = slash.shape
    dev = slash.device
    p0, end, last = _block_bounds(q_len, kv_len, block_q, dev)
    nq = p0.shape[0]
    width = tiles_width(*slash_runs(slash, slash_count), q_len, kv_len, block_q, exact_width)
    sl = slash.to(torch.int64)
    dpre, cpre = diag_prefix.to(torch.int64), column_prefix.to(torch.int64)
    per_range = (block_q + VS_TILE - 1) // VS_TILE

    tiles = torch.full((b, hx, nq, width + 1), -1, dtype=torch.int64, device=dev)
    n_clean = torch.zeros(b, hx, nq, dtype=torch.int64, device=dev)
    n_masked = torch.zeros(b, hx, nq, dtype=torch.int64, device=dev)
    pairs = torch.zeros(b, hx, nq, dtype=torch.int64, device=dev)
    covered = torch.zeros(b, hx, nq, dtype=torch.int64, device=dev)
    for i in range(ns):
        o = sl[:, :, i, None]                                   # (B, Hx, 1)
        active = (i < slash_count.to(torch.int64))[..., None]
        e = end - o
        r = torch.clamp(p0 - o, min=0)
        for _ in range(per_range):
            need = active & (e > covered)
            s = torch.maximum(r, covered)
            below = s + VS_TILE - 1 <= p0
            hi_c = torch.clamp(s + VS_TILE, max=kv_len)
            nocol = (cpre.gather(-1, hi_c) - cpre.gather(-1, torch.clamp(s, max=kv_len))) == 0
            lo = torch.clamp(p0 - (s + VS_TILE - 1), min=0)
            hi = torch.clamp(last - s, min=0)
            full = (dpre.gather(-1, torch.clamp(hi + 1, max=kv_len)) - dpre.gather(-1, torch.clamp(lo, max=kv_len))
                    ) == (hi - lo + 1)
            clean = below & nocol & (full if exact else torch.ones_like(full))
            code = s + GATHER_BIT * (~full).long() if exact else s
            slot = torch.where(clean, n_clean, width - 1 - n_masked)
            slot = torch.where(need, slot, torch.full_like(slot, width))
            tiles.scatter_(-1, slot[..., None], torch.where(need, code, torch.full_like(code, -1))[..., None])
            n_clean += (need & clean).long()
            n_masked += (need & ~clean).long()
            if not exact:
                tp = _tile_superset_pairs(s, p0, last, kv_len, cpre, column_positions)
                pairs += torch.where(need, tp, torch.zeros_like(tp))
            covered = torch.where(need, s + VS_TILE, covered)
    return (tiles[..., :width].to(torch.int32).contiguous(), n_clean.to(torch.int32), n_masked.to(torch.int32),
            None if exact else pairs)


def prepare_vertical_slash(vertical_indices: torch.Tensor, slash_indices: torch.Tensor, q_len: int,
                           kv_len: int, *, use_triton: bool, block_q: int | None = None,
                           exact: bool = True, check_indices: bool = True,
                           exact_width: bool | None = None) -> VSLayout:
    """Validate and convert the index lists into the kernel's layout (all on the device).

    vertical_indices: (B, Hx, NV) absolute key columns; slash_indices: (B, Hx, NS) diagonal
    offsets; -1 marks unused slots, repeats are allowed. ``use_triton`` builds the tiles with
    the Triton kernel, else with :func:`slash_tiles_reference`. ``exact`` chooses the
    semantics the layout is built for (it decides which tiles need no mask); ``block_q`` the
    query rows per program (64 or 128; default :func:`default_block_q`). ``check_indices=False``
    skips the range check of the entries (it reads them back to the host); only for lists
    known to be in range, such as a planner's output. ``exact_width``: the tile lists' width,
    exact (read back) or a host bound (see :func:`~sparsa.ops.vertical_slash.runs.tiles_width`;
    default: the bound on CUDA); the attention is the same either way.
    """
    if not isinstance(exact, bool):
        raise TypeError(f"exact: expected a bool, got {type(exact).__name__}")
    if block_q is None:
        block_q = default_block_q(exact)
    if block_q not in BLOCK_Q_CHOICES:
        raise ValueError(f"block_q: must be one of {BLOCK_Q_CHOICES}, got {block_q}")
    for name, x in (("vertical_indices", vertical_indices), ("slash_indices", slash_indices)):
        if check_indices:
            _check_range(name, x, kv_len)
        elif x.dtype not in (torch.int16, torch.int32, torch.int64):
            raise TypeError(f"{name}: dtype must be an integer type, got {x.dtype}")
    slash, slash_count = _sorted_unique(slash_indices, descending=True, pad=-1)
    columns, column_count = _sorted_unique(vertical_indices, descending=False, pad=kv_len)
    dev = columns.device
    b, hx, _ = columns.shape
    p0, _, last = _block_bounds(q_len, kv_len, block_q, dev)
    nq = p0.shape[0]
    block_columns = torch.searchsorted(columns, last.to(torch.int32).expand(b, hx, nq).contiguous(), right=True)
    below = torch.searchsorted(columns, p0.to(torch.int32).expand(b, hx, nq).contiguous(), right=True)
    diag_table = _membership(slash, slash_count, kv_len, before=DIAG_PAD, after=block_q)
    column_table = _membership(columns, column_count, kv_len)
    diag_prefix = _prefix(diag_table[..., DIAG_PAD:DIAG_PAD + kv_len])
    column_prefix = _prefix(column_table)
    diag_bits = pack_bits(diag_table, offset_bits_words(kv_len))
    column_positions = None if exact else _prefix(column_table, torch.arange(kv_len, device=dev))
    if use_triton:
        from .convert_triton import slash_tiles_triton   # triton: optional, imported only on this path
        tiles, clean, masked, tile_pairs = slash_tiles_triton(
            slash, slash_count, diag_prefix, column_prefix, q_len, kv_len, block_q, exact, column_positions,
            exact_width)
    else:
        tiles, clean, masked, tile_pairs = slash_tiles_reference(
            slash, slash_count, diag_prefix, column_prefix, q_len, kv_len, block_q, exact, column_positions,
            exact_width)
    return VSLayout(q_len, kv_len, block_q, exact, slash, slash_count, columns, column_count,
                    block_columns.to(torch.int32).contiguous(), below.to(torch.int32).contiguous(),
                    tiles, clean, masked, diag_table, column_table, diag_prefix, column_prefix, diag_bits,
                    tile_pairs)


def _column_pairs(layout: VSLayout) -> torch.Tensor:
    """Causal pairs on the vertical columns alone, int64 (B, Hx)."""
    off = layout.kv_len - layout.q_len
    nv = layout.columns.shape[-1]
    c = layout.columns.to(torch.int64)
    c_ok = torch.arange(nv, device=c.device) < layout.column_count[..., None]
    zero = torch.zeros((), dtype=torch.int64, device=c.device)
    return torch.where(c_ok, layout.kv_len - torch.clamp(c, min=off), zero).sum(-1)


def _per_query_head(total: torch.Tensor, heads: int) -> torch.Tensor:
    total = total.to(torch.float64)
    hx = total.shape[1]
    return total if hx == heads else total.repeat_interleave(heads // hx, dim=1)


def vertical_slash_pairs(layout: VSLayout, heads: int) -> torch.Tensor:
    """Causal pairs on the union of the columns and diagonals, float64 (B, heads).

    Exact count from the sorted lists: pairs on the diagonals + pairs on the columns - pairs
    on both (a column ``c`` and a diagonal ``o`` meet at row position ``c + o``).
    """
    lq, lk = layout.q_len, layout.kv_len
    off = lk - lq
    ns = layout.slash.shape[-1]
    o = layout.slash.to(torch.int64)
    o_ok = torch.arange(ns, device=o.device) < layout.slash_count[..., None]
    nv = layout.columns.shape[-1]
    c = layout.columns.to(torch.int64)
    c_ok = torch.arange(nv, device=c.device) < layout.column_count[..., None]
    zero = torch.zeros((), dtype=torch.int64, device=o.device)
    diag = torch.where(o_ok, lk - torch.clamp(o, min=off), zero).sum(-1)
    # offsets ascending (the padding, flipped to the front, sorts below any searched value)
    asc = torch.where(o_ok, o, torch.full_like(o, -2 * lk - 1)).flip(-1).contiguous()
    lo = torch.searchsorted(asc, (off - c).contiguous(), right=False)
    hi = torch.searchsorted(asc, (lk - 1 - c).contiguous(), right=True)
    both = torch.where(c_ok, hi - lo, zero).sum(-1)
    return _per_query_head(diag + _column_pairs(layout) - both, heads)


def superset_pairs(layout: VSLayout, heads: int) -> torch.Tensor:
    """Causal pairs attended with superset semantics (tiles and columns), float64 (B, heads)."""
    if layout.tile_pairs is None:
        raise ValueError("layout: superset pairs need a layout built with exact=False")
    return _per_query_head(layout.tile_pairs.sum(-1) + _column_pairs(layout), heads)


def computed_tile_elements(layout: VSLayout, heads: int) -> float:
    """Query-key score elements the kernel computes (tiles and column chunks), all heads."""
    hx = layout.clean_count.shape[1]
    chunks = torch.ceil(layout.block_columns.double() / VS_TILE)
    return float((layout.tile_count.double().sum() + chunks.sum()) * layout.block_q * VS_TILE * (heads // hx))


def dense_tile_elements(layout: VSLayout, heads: int) -> float:
    """Score elements of a dense causal pass in the same tiles (aligned 64-key tiles), all heads."""
    _, end, _ = _block_bounds(layout.q_len, layout.kv_len, layout.block_q, layout.tiles.device)
    b = layout.tiles.shape[0]
    tiles = int(((end + VS_TILE - 1) // VS_TILE).sum())
    return float(tiles * layout.block_q * VS_TILE * b * heads)


def superset_routes_dense(layout: VSLayout) -> bool:
    """True when a superset layout computes at least ``DENSE_ROUTE_FRACTION`` of the score
    elements of a dense causal pass: dense attention (a superset of any layout) is then run
    instead. Reads one number back to the host."""
    if layout.exact:
        return False
    hx = layout.tiles.shape[1]
    return computed_tile_elements(layout, hx) >= DENSE_ROUTE_FRACTION * dense_tile_elements(layout, hx)


def _block_cover(layout: VSLayout, first: int, stop: int) -> torch.Tensor:
    """(B, Hx, stop - first, kv_len) bool: keys inside the tiles of query blocks first..stop-1."""
    codes = layout.tiles[:, :, first:stop].to(torch.int64)
    b, hx, nb, _ = codes.shape
    lk = layout.kv_len
    dev = codes.device
    cover = torch.zeros(b, hx, nb, lk + VS_TILE + 1, dtype=torch.bool, device=dev)
    keys = (codes & START_MASK)[..., None] + torch.arange(VS_TILE, device=dev)          # (B, Hx, nb, W, tile)
    keys = torch.where(codes[..., None] >= 0, keys, torch.full_like(keys, lk + VS_TILE))
    cover.scatter_(-1, keys.flatten(-2), True)
    return cover[..., :lk]


def tile_cover_mask(layout: VSLayout) -> torch.Tensor:
    """Dense (B, Hx, q_len, kv_len) bool mask of the pairs inside tiles (no causality).

    Test helper for the superset semantics; memory O(q_len * kv_len).
    """
    rows = torch.arange(layout.q_len, device=layout.tiles.device) // layout.block_q
    return _block_cover(layout, 0, layout.n_query_blocks)[:, :, rows]


def vertical_slash_superset_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: VSLayout, *,
                                scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference of ``exact=False``: causal pairs inside the tiles or on the columns.

    Returns (out like q, pairs (batch, heads) float64). Works in chunks of query rows (the
    tile cover of the blocks a chunk spans, O(rows * kv_len) memory).
    """
    lq, lk = layout.q_len, layout.kv_len
    bq = layout.block_q
    col_ok = layout.column_table.bool()
    cols = torch.arange(lk, device=q.device)

    def mask_fn(s: int, e: int) -> torch.Tensor:
        first = s // bq
        cover = _block_cover(layout, first, (e + bq - 1) // bq)
        rows = torch.arange(s, e, device=q.device) // bq - first
        causal = cols[None, :] <= query_positions(lq, lk, s, e, q.device)[:, None]
        return (cover[:, :, rows] | col_ok[:, :, None, :]) & causal

    return masked_attention(q, k, v, mask_fn, scale=scale)


def dense_causal_pairs(batch: int, heads: int, q_len: int, kv_len: int, device: torch.device) -> torch.Tensor:
    """(batch, heads) float64 filled with the causal pair count (the dense route's pairs)."""
    return torch.full((batch, heads), float(causal_pairs(q_len, kv_len)), dtype=torch.float64, device=device)


__all__ = ["BLOCK_Q_CHOICES", "DENSE_ROUTE_FRACTION", "DIAG_PAD", "GATHER_BIT", "START_MASK", "VSLayout", "VS_TILE",
           "computed_tile_elements", "default_block_q", "dense_causal_pairs", "dense_tile_elements",
           "offset_bits_words", "pack_bits", "prepare_vertical_slash", "slash_runs", "slash_tiles_reference",
           "superset_pairs", "superset_routes_dense", "tile_cover_mask", "tiles_width", "tiles_width_runs", "vertical_slash_pairs",
           "vertical_slash_superset_ref"]
