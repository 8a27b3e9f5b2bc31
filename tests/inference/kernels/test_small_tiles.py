"""The batch-invariant products' small tiles (inference/kernels/invariant.py): used only where probed identical."""
from __future__ import annotations

import torch

from inference.kernels import invariant


def test_a_product_whose_rows_depend_on_the_tile_size_gets_no_small_tile():
    seen = []

    def shape_dependent(t: torch.Tensor) -> torch.Tensor:
        seen.append(t.shape[0])
        return t * t.shape[0]                    # every row's result changes with the call's row count

    x = torch.randn(40, 8)
    out = invariant.row_tiles(shape_dependent, x, key=("test-shape-dependent",))
    assert invariant.small_tiles(("test-shape-dependent",), shape_dependent, x) == ()
    assert seen[-1] == invariant.TILE_ROWS        # the 40 rows went through one whole padded tile
    assert torch.equal(out, x * invariant.TILE_ROWS)


def test_a_row_wise_product_runs_its_last_rows_in_the_smallest_tile_that_holds_them():
    seen = []

    def row_wise(t: torch.Tensor) -> torch.Tensor:
        seen.append(t.shape[0])
        return t * 2

    x = torch.randn(invariant.TILE_ROWS + 20, 8)
    assert torch.equal(invariant.row_tiles(row_wise, x, key=("test-row-wise",)), x * 2)
    assert seen[-2:] == [invariant.TILE_ROWS, 32]


def test_linear_rows_match_whatever_the_step_size():
    """Row 3 of a product alone in a small step, and inside a step of 300 rows: bit-identical."""
    weight, x = torch.randn(96, 64), torch.randn(300, 64)
    whole = invariant.linear(x, weight)
    for rows in (4, 17, 100, 256, 270):
        assert torch.equal(invariant.linear(x[:rows], weight)[3], whole[3])


def test_attention_rows_are_the_same_in_a_compact_call_as_in_the_whole_tile():
    """A decode row, or a chunk's few rows, are computed in a call of a few rows (each request masked by its
    own positions) and come out bit-identical to the same rows computed with the whole position-aligned tile
    (a prompt that fills it), for both dtypes the CPU engine computes in."""
    for dtype in (torch.float32, torch.bfloat16):
        gen = torch.Generator().manual_seed(3)
        ctx = 150                                              # tile 2: positions [128, 192)
        keys, values = (torch.randn(3, ctx, 64, generator=gen).to(dtype) for _ in range(2))
        q = torch.randn(ctx, 9, 64, generator=gen).to(dtype)
        whole = invariant.attend_tiles([(q, keys, values)], 0.125)[0]            # every tile whole or compact
        decode = invariant.attend_tiles([(q[-1:], keys, values)], 0.125)[0]     # one row: a compact call
        chunk = invariant.attend_tiles([(q[-7:], keys[:, :ctx], values[:, :ctx]),
                                        (q[ctx - 4:ctx - 3], keys[:, :ctx - 3], values[:, :ctx - 3])], 0.125)
        assert invariant.compact_rows(1, 192, q[-1:], keys, 0.125) < invariant.QUERY_TILE
        assert torch.equal(decode[0], whole[-1]) and torch.equal(chunk[0], whole[-7:])
        assert torch.equal(chunk[1][0], invariant.attend_tiles([(q[:ctx - 3], keys[:, :ctx - 3],
                                                                 values[:, :ctx - 3])], 0.125)[0][-1])


def test_a_query_size_that_computes_rows_differently_is_never_used(monkeypatch):
    """Where the probe finds no compact size identical to the whole tile, calls keep the whole tile."""
    monkeypatch.setattr(invariant, "_probe_query_sizes", lambda *args: ())
    monkeypatch.setattr(invariant, "_same_as_full_query", {})
    q, keys = torch.randn(1, 9, 64), torch.randn(3, 100, 64)
    assert invariant.compact_rows(1, 128, q, keys, 0.125) == invariant.QUERY_TILE


def test_every_small_tile_the_probe_accepts_matches_the_full_tile_at_every_offset_on_fresh_rows():
    """The real products of SmolLM2's shapes, in both CPU dtypes: rows drawn apart from the probe's, computed in
    each accepted small tile at every 16-row offset of a full tile, come out bit-identical to the full tile's.
    (A probe that compared only a tile's first and last rows accepted a bf16 tile on an AMX Xeon that differed
    at inner offsets, at 2 threads.)"""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        _check_accepted_tiles_at_every_offset()
    finally:
        torch.set_num_threads(threads)


def _check_accepted_tiles_at_every_offset() -> None:
    for dtype in (torch.float32, torch.bfloat16):
        for features_in, features_out in ((576, 960), (576, 3072), (1536, 576)):
            gen = torch.Generator().manual_seed(11)
            weight = torch.randn(features_out, features_in, generator=gen).to(dtype)
            x = torch.randn(invariant.TILE_ROWS, features_in, generator=gen).to(dtype)
            full = invariant.linear(x, weight)
            invariant.linear(x[:5], weight)                      # a step with a partial tile: the probe runs
            key = ("linear", weight.shape, weight.stride(), weight.dtype, True, torch.get_num_threads())
            accepted = invariant._same_as_full_tile[key]
            assert dtype == torch.bfloat16 or accepted               # float32 keeps small tiles on every CPU seen
            for tile in accepted:
                for start in range(0, invariant.TILE_ROWS - tile + 1, 16):
                    rows = invariant.linear(x[start:start + tile], weight)
                    assert torch.equal(rows, full[start:start + tile]), (dtype, features_in, features_out, tile, start)
