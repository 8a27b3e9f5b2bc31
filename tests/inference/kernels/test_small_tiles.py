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
