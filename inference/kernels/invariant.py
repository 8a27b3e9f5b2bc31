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
  rows past the last full tile may go through a smaller tile instead, but only one that a probe found to
  compute every row bit-identically to the full tile for that very product (`small_tiles`): a small step
  then costs its own rows, not 256 (on AVX2 float32 every small tile qualifies);
* attention runs per request (`attend_fixed`): its queries in `QUERY_TILE`-row tiles, its keys zero-padded
  and masked to a multiple of `KEY_BLOCK` (torch's CPU flash kernel reduces keys in blocks of 512, and a block
  that is fully masked adds exact zeros), so neither the chunking nor a prefix-cache hit changes the
  reduction a query row sees.

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
# TILE_ROWS tile's for that product (AVX2 float32 here: all of them; AVX-512 bf16: measured otherwise)
SMALL_TILES = (16, 32, 64, 128)
QUERY_TILE = 64    # rows of every attention query tile
KEY_BLOCK = 512    # keys are padded to a multiple of this (the CPU flash kernel's key block)


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _pad_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    """`t` with zero rows appended along dim 0 up to `rows`."""
    if t.shape[0] == rows:
        return t
    return torch.cat([t, t.new_zeros(rows - t.shape[0], *t.shape[1:])])


_same_as_full_tile: dict[tuple, tuple[int, ...]] = {}


def small_tiles(key: tuple, fn: Callable[..., torch.Tensor], *xs: torch.Tensor) -> tuple[int, ...]:
    """The SMALL_TILES whose every row `fn` computes bit-identically to a TILE_ROWS tile, for the product named
    by `key` (its shapes, strides, dtype) at this thread count; probed once on random rows. A product's
    reduction order depends on the shapes it is called with, never on the values, so one probe decides."""
    key = key + (torch.get_num_threads(),)
    if key not in _same_as_full_tile:
        gen = torch.Generator(device=xs[0].device).manual_seed(0)
        probe = [torch.randn(TILE_ROWS, *x.shape[1:], generator=gen, device=x.device).to(x.dtype) for x in xs]
        full = fn(*probe)
        _same_as_full_tile[key] = tuple(t for t in SMALL_TILES if all(
            torch.equal(fn(*(p[start:start + t] for p in probe)), full[start:start + t]) for start in (0, t)))
    return _same_as_full_tile[key]


def row_tiles(fn: Callable[..., torch.Tensor], *xs: torch.Tensor, key: tuple | None = None) -> torch.Tensor:
    """fn applied to `TILE_ROWS`-row tiles of `xs` (same row count, zero-padded), results concatenated, trimmed.

    With `key` (the product's identity for `small_tiles`), the rows past the last full tile go through the
    smallest probed-identical small tile that holds them instead of a whole padded TILE_ROWS tile.
    """
    n = xs[0].shape[0]
    if n == 0:
        return fn(*xs)
    rest = n % TILE_ROWS
    fits = [t for t in (small_tiles(key, fn, *xs) if key and rest else ()) if t >= rest]
    sizes = [TILE_ROWS] * (n // TILE_ROWS) + ([min(fits, default=TILE_ROWS)] if rest else [])
    padded = [_pad_rows(x, sum(sizes)).split(sizes) for x in xs]
    return torch.cat([fn(*tile) for tile in zip(*padded)])[:n]


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear` over fixed row tiles."""
    key = ("linear", weight.shape, weight.stride(), weight.dtype, bias is None)
    return row_tiles(lambda t: F.linear(t, weight, bias), x, key=key)


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


def attend_fixed(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scale: float) -> torch.Tensor:
    """Causal attention of one request's n new queries, the last n of its context, on fixed shapes.

    q: [n, Hq, D]; keys, values: [Hkv, ctx, D] (the whole context) -> [n, Hq, D]. The queries run in
    `QUERY_TILE`-row tiles (one SDPA call, tiles as the batch), the keys zero-padded to a multiple of
    `KEY_BLOCK` and masked; padding query rows see the keys up to their would-be position and are dropped.
    """
    n, ctx = q.shape[0], keys.shape[1]
    rows, width = round_up(n, QUERY_TILE), round_up(ctx, KEY_BLOCK)
    tiles = rows // QUERY_TILE
    queries = _pad_rows(q, rows).unflatten(0, (tiles, QUERY_TILE)).transpose(1, 2)       # [tiles, Hq, 64, D]
    pad = (0, 0, 0, width - ctx)
    keys, values = (F.pad(t, pad).unsqueeze(0).expand(tiles, -1, -1, -1) for t in (keys, values))
    positions = torch.arange(rows, device=q.device) + (ctx - n)
    mask = torch.arange(width, device=q.device)[None, :] <= positions[:, None]            # [rows, width]
    mask = mask.unflatten(0, (tiles, QUERY_TILE)).unsqueeze(1)                            # [tiles, 1, 64, width]
    out = F.scaled_dot_product_attention(queries, keys, values, attn_mask=mask, scale=scale,
                                         enable_gqa=keys.shape[1] != q.shape[1])
    return out.transpose(1, 2).flatten(0, 1)[:n]
