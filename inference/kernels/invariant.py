"""Batch-invariant ops for the torch (CPU) path: a row's result never depends on the rows beside it.

Why: a CPU matrix-product kernel picks its blocking, its K-splitting and its vector tails from the shape
it is given, so the same row multiplied inside a matrix of 7 rows and inside one of 300 rows can round
differently (measured on AVX-512 with torch's oneDNN/MKL kernels, in float32 and bfloat16; padding the row
count to a multiple of 64 is not enough). A request's logits then depend on what it was batched with,
which breaks byte-identical replays unless the engine computes in float64.

The fix is to never let a kernel see a shape that depends on the batch:

* every matrix product over token rows runs on fixed `TILE_ROWS`-row tiles (`row_tiles`, `linear`,
  `sgmv_tiled`, `label_logits`): the rows are zero-padded to a multiple of the tile and each tile is its own
  call, so a row meets the same kernel, in the same position-independent order, whatever the batch. The
  rows past the last full tile may go through a smaller tile (a multiple of 16 rows) instead, but only one
  that a probe found to compute every row bit-identically to the full tile for that very product
  (`small_tiles`): a small step then costs its own rows rounded up to 16, not 256;
* attention runs on query tiles aligned to absolute positions (`attend_tiles`): tile k holds positions
  [64k, 64k + 64) and always attends the keys [0, 64(k + 1)), causally masked, whatever chunk its rows
  came in (rows of the tile outside the chunk are zero padding, dropped; keys past the context are zeros,
  masked). A row's call then has the same shape and the same unmasked inputs whether its prompt came in one
  chunk or several, after a prefix-cache hit or not; a masked key adds exact zeros to the softmax and to
  the values' sum. Tiles of the same index from several requests go in one call, as its batch (each batch
  entry is computed apart). Each tile computes only its causal width, about half the padded square.
  A call holds only the rows its members have in the tile (a decode: one row each), padded to a few rows
  (`compact_rows`): used only where a probe finds those rows bit-identical to the whole tile's for that
  shape (every multiple of 4 qualified on an AMD EPYC with AVX-512, float32 and bf16; 1 and 2 rows did not).

Row-wise ops (RMSNorm, SiLU * mul, rope's element-wise products, residual adds) were measured row-invariant
as they are and are left alone. The property test is tests/inference/test_batch_invariance.py.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from inference.kernels.reference import LoraSegment

TILE_ROWS = 256    # rows of every matrix product over token rows (64 and 128 are invariant too, and slower)
# smaller tiles for a step's last rows, each used only where a probe finds its rows bit-identical to a
# TILE_ROWS tile's for that product (every one qualified on an AMD EPYC, AVX2 float32 and AVX-512 bf16)
SMALL_TILES = tuple(range(16, 256, 16))   # 16, 32, ..., 240
QUERY_TILE = 64    # rows of every attention query tile, aligned to absolute positions


def _pad_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    """`t` with zero rows appended along dim 0 up to `rows`."""
    if t.shape[0] == rows:
        return t
    return torch.cat([t, t.new_zeros(rows - t.shape[0], *t.shape[1:])])


_same_as_full_tile: dict[tuple, tuple[int, ...]] = {}


def small_tiles(key: tuple, fn: Callable[..., torch.Tensor], *xs: torch.Tensor) -> tuple[int, ...]:
    """The SMALL_TILES whose every row `fn` computes bit-identically to a TILE_ROWS tile, for the product named
    by `key` (its shapes, strides, dtype) at this thread count; probed once on random rows. A product's
    reduction order depends on the shapes it is called with, never on the values, so one probe decides; but a
    bf16 result rounds most order differences away, so the probe checks the rows at every 16-row offset of the
    tile (checking the first and last rows only let a 48-row bf16 tile of 1536 x 576 through on an Intel Xeon
    with AMX, which differed from the full tile at inner offsets for every random draw tried)."""
    key = key + (torch.get_num_threads(),)
    if key not in _same_as_full_tile:
        gen = torch.Generator(device=xs[0].device).manual_seed(0)
        probe = [torch.randn(TILE_ROWS, *x.shape[1:], generator=gen, device=x.device).to(x.dtype) for x in xs]
        full = fn(*probe)
        _same_as_full_tile[key] = tuple(t for t in SMALL_TILES if all(    # every 16-row offset in the tile
            torch.equal(fn(*(p[start:start + t] for p in probe)), full[start:start + t])
            for start in range(0, TILE_ROWS - t + 1, 16)))
    return _same_as_full_tile[key]


def row_tiles(fn: Callable[..., torch.Tensor], *xs: torch.Tensor, key: tuple | None = None) -> torch.Tensor:
    """fn applied to `TILE_ROWS`-row tiles of `xs` (same row count, zero-padded), results concatenated, trimmed.

    With `key` (the product's identity for `small_tiles`), the rows past the last full tile go through the
    smallest probed-identical small tile that holds them instead of a whole padded TILE_ROWS tile.
    """
    n = xs[0].shape[0]
    if n == 0:
        return fn(*xs)
    sizes = _tile_sizes(n, key, fn, xs)
    padded = [_pad_rows(x, sum(sizes)).split(sizes) for x in xs]
    return torch.cat([fn(*tile) for tile in zip(*padded)])[:n]


def _tile_sizes(n: int, key: tuple | None, fn: Callable[..., torch.Tensor], xs: tuple[torch.Tensor, ...]) -> list[int]:
    """The row tiles of `n` rows: full TILE_ROWS tiles, then (with `key`) the smallest probed-identical small
    tile that holds the rest, or one more full tile."""
    rest = n % TILE_ROWS
    fits = [t for t in (small_tiles(key, fn, *xs) if key and rest else ()) if t >= rest]
    return [TILE_ROWS] * (n // TILE_ROWS) + ([min(fits, default=TILE_ROWS)] if rest else [])


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear` over fixed row tiles, each product written straight into its rows of the result (a contiguous
    row slice): no padded copy of the input nor concatenation of the outputs, only the last tile padded."""
    key = ("linear", weight.shape, weight.stride(), weight.dtype, bias is None)
    w_t = weight.t()

    def product(t: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        out = t.new_empty(t.shape[0], weight.shape[0]) if out is None else out
        return torch.mm(t, w_t, out=out) if bias is None else torch.addmm(bias, t, w_t, out=out)

    x, n = x.contiguous(), x.shape[0]
    if n == 0:
        return product(x)
    y = x.new_empty(n, weight.shape[0])
    start = 0
    for size in _tile_sizes(n, key, product, (x,)):
        if start + size <= n:
            product(x[start:start + size], y[start:start + size])
        else:                                            # the last tile: its rows padded to the tile
            y[start:] = product(_pad_rows(x[start:], size))[:n - start]
        start += size
    return y


def sgmv_tiled(y: torch.Tensor, x: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor,
               segments: list[LoraSegment]) -> None:
    """`sgmv_ref` with the shrink and the expand of each segment over fixed row tiles.

    A segment's rank and slot are its adapter's, so the shapes depend on the adapter only.
    """
    for seg in segments:
        a, b = lora_a[seg.slot, :, :seg.rank], lora_b[seg.slot, :seg.rank]
        key = ("lora", a.shape, a.stride(), b.shape, b.stride(), a.dtype)
        delta = row_tiles(lambda t: (t @ a) @ b, x[seg.start:seg.end], key=key)
        y[seg.start:seg.end] += delta * seg.scale


def label_logits(hidden: torch.Tensor, label_rows: torch.Tensor) -> torch.Tensor:
    """hidden: [N, H], label_rows: [N, K, H] (each row's label embeddings) -> [N, K], over fixed row tiles."""
    key = ("labels", label_rows.shape[1:], hidden.dtype)
    return row_tiles(lambda h, w: torch.einsum("nh,nkh->nk", h, w), hidden, label_rows, key=key)


def attend_tiles(requests: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], scale: float) -> list[torch.Tensor]:
    """Causal attention of several requests' new queries, each the last n of its context, on fixed shapes.

    requests: (q [n, Hq, D], keys [Hkv, ctx, D], values [Hkv, ctx, D]) each -> [n, Hq, D] each. Query tile k
    (positions [QUERY_TILE * k, QUERY_TILE * (k + 1))) attends keys [0, QUERY_TILE * (k + 1)); the tiles of one
    index from every request form one SDPA call. A call holds only the rows its members have in the tile
    (each member's own, masked by its own positions), zero-padded to the smallest row count of
    `QUERY_SIZES` that a probe found to compute every row bit-identically to the whole tile for this shape
    (`compact_rows`); else the whole tile: a decode step computes 4 rows a request, not 64."""
    outs = [torch.empty_like(q) for q, _, _ in requests]
    by_tile: dict[int, list[tuple[int, int, int]]] = {}     # tile index -> (request, first, last + 1 position)
    for i, (q, keys, _) in enumerate(requests):
        first, ctx = keys.shape[1] - q.shape[0], keys.shape[1]
        for k in range(first // QUERY_TILE, -(-ctx // QUERY_TILE)):
            by_tile.setdefault(k, []).append((i, max(k * QUERY_TILE, first), min((k + 1) * QUERY_TILE, ctx)))
    device = outs[0].device
    for k, members in by_tile.items():
        lo, width = k * QUERY_TILE, (k + 1) * QUERY_TILE
        q0, k0 = requests[members[0][0]][0], requests[members[0][0]][1]
        size = compact_rows(max(stop - start for _, start, stop in members), width, q0, k0, scale)
        queries, keys, values, positions, spans = [], [], [], [], []
        for i, start, stop in members:
            q, key, value = requests[i]
            first = key.shape[1] - q.shape[0]
            at = lo if size == QUERY_TILE else start            # the tile's first position, or the member's
            tile = q.new_zeros(size, *q.shape[1:])
            tile[start - at:stop - at] = q[start - first:stop - first]
            queries.append(tile)
            positions.append(torch.arange(at, at + size, device=device).clamp(max=width - 1))
            keys.append(_keys_to(key, width))
            values.append(_keys_to(value, width))
            spans.append((i, slice(start - first, stop - first), slice(start - at, stop - at)))
        mask = torch.arange(width, device=device)[None, None, :] <= torch.stack(positions)[:, :, None]
        o = F.scaled_dot_product_attention(torch.stack(queries).transpose(1, 2), torch.stack(keys),
                                           torch.stack(values), attn_mask=mask[:, None], scale=scale,
                                           enable_gqa=keys[0].shape[0] != queries[0].shape[1])
        o = o.transpose(1, 2)                                                     # [G, size, Hq, D]
        for g, (i, into, rows) in enumerate(spans):
            outs[i][into] = o[g, rows]
    return outs


QUERY_SIZES = tuple(range(4, QUERY_TILE, 4))   # compact query row counts (1 and 2 rows differed in probes)
_same_as_full_query: dict[tuple, tuple[int, ...]] = {}


def compact_rows(rows: int, width: int, q: torch.Tensor, keys: torch.Tensor, scale: float) -> int:
    """The query rows an attention call of tile width `width` computes for members holding up to `rows`
    rows: the smallest of QUERY_SIZES whose rows a probe found bit-identical to the whole QUERY_TILE tile's,
    first and last rows alike, for this shape (heads, head size, dtype, width, threads); else QUERY_TILE.
    A kernel's blocking depends on the shapes it is called with, never on the values, so one probe decides."""
    key = (width, tuple(q.shape[1:]), keys.shape[0], q.dtype, q.device.type, scale, torch.get_num_threads())
    if key not in _same_as_full_query:
        _same_as_full_query[key] = _probe_query_sizes(width, q, keys, scale)
    return min((n for n in _same_as_full_query[key] if n >= rows), default=QUERY_TILE)


def _probe_query_sizes(width: int, q: torch.Tensor, keys: torch.Tensor, scale: float) -> tuple[int, ...]:
    gen = torch.Generator(device=q.device).manual_seed(0)
    heads, dim, kv_heads, lo = q.shape[1], q.shape[2], keys.shape[0], width - QUERY_TILE

    def randn(*shape):
        return torch.randn(*shape, generator=gen, device=q.device).to(q.dtype)

    tile_q, tile_k, tile_v = randn(1, heads, QUERY_TILE, dim), randn(1, kv_heads, width, dim), randn(1, kv_heads, width, dim)
    positions = torch.arange(lo, width, device=q.device)
    mask = (torch.arange(width, device=q.device)[None, :] <= positions[:, None])[None, None]

    def attend(rows: slice) -> torch.Tensor:
        return F.scaled_dot_product_attention(tile_q[:, :, rows], tile_k, tile_v, attn_mask=mask[:, :, rows],
                                              scale=scale, enable_gqa=kv_heads != heads)
    full = attend(slice(0, QUERY_TILE))
    return tuple(n for n in QUERY_SIZES if all(torch.equal(attend(slice(a, a + n)), full[:, :, a:a + n])
                                               for a in range(0, QUERY_TILE - n + 1, 4)))


def _keys_to(keys: torch.Tensor, width: int) -> torch.Tensor:
    """keys [Hkv, ctx, D] as exactly `width` positions: cut, or zero-padded past the context."""
    ctx = keys.shape[1]
    return keys[:, :width] if ctx >= width else F.pad(keys, (0, 0, 0, width - ctx))
