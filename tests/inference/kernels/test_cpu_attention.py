"""Parity of `paged_attention_sdpa` (the torch path the engine takes off CUDA) with `paged_attention_ref`:
decode, prefill, prefill over a cached prefix, batches mixing them and batches of equal shapes that
share one SDPA call, long chunks run in query pieces; across dtypes, block sizes, GQA ratios and ragged lengths."""
from __future__ import annotations

import itertools

import pytest
import torch

from inference.kernels.cpu_attention import paged_attention_sdpa
from tests.inference.kernels.conftest import TOLERANCES
from tests.inference.kernels.paged_cases import (
    BATCHES, assert_matches_reference, make_paged_case, outputs_before_and_after_overwriting_unread_blocks)

CASES = BATCHES | {
    "equal_prefills": [(23, 23), (23, 23), (23, 23)],
    "equal_prefixes": [(40, 17), (33, 1), (40, 17), (40, 17), (33, 1)],   # a group not back to back
    "equal_decodes": [(37, 1), (37, 1), (37, 1)],
    "long_prefills": [(300, 300), (200, 150)],   # chunks cut into query pieces, with and without a prefix
}
ALL_DTYPES = [pytest.param(d, id=str(d).removeprefix("torch.")) for d in (torch.float64, *TOLERANCES)]


@pytest.mark.parametrize("mode, group, block_size", itertools.product(CASES, (1, 3, 4), (8, 16)))
@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_sdpa_paged_attention_matches_reference(dtype, block_size, group, mode):
    assert_matches_reference(paged_attention_sdpa, dtype, block_size, group, CASES[mode])


def test_sdpa_paged_attention_ignores_blocks_outside_live_contexts():
    """Overwriting every block no request reads (padding included) must not change the output."""
    before, after = outputs_before_and_after_overwriting_unread_blocks(paged_attention_sdpa, BATCHES["mixed"])
    torch.testing.assert_close(before, after, atol=1e-6, rtol=0)


def _step_kv(cache: torch.Tensor, tables: torch.Tensor, seq_lens: list[int], starts: list[int]) -> torch.Tensor:
    """[T, Hkv, D]: what the step wrote to the cache for its tokens, read back slot by slot."""
    block_size, rows = cache.shape[1], []
    for b, seq_len in enumerate(seq_lens):
        for pos in range(seq_len - (starts[b + 1] - starts[b]), seq_len):
            rows.append(cache[tables[b, pos // block_size], pos % block_size])
    return torch.stack(rows)


@pytest.mark.parametrize("mode", CASES)
@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_sdpa_paged_attention_with_the_steps_own_kv_matches_the_cache_path(dtype, mode):
    """Passing the step's K/V (read instead of the cache where a request has no cached prefix) changes nothing."""
    q, k_cache, v_cache, tables, seq_lens, starts = make_paged_case(dtype, 8, 3, CASES[mode])
    k, v = (_step_kv(c, tables, seq_lens, starts) for c in (k_cache, v_cache))
    expected = paged_attention_sdpa(q, k_cache, v_cache, tables, seq_lens, starts, 0.2)
    atol, rtol = TOLERANCES.get(dtype, (1e-12, 1e-12))
    torch.testing.assert_close(paged_attention_sdpa(q, k_cache, v_cache, tables, seq_lens, starts, 0.2, k, v),
                               expected, atol=atol, rtol=rtol)


def _all_fixed(q, k_cache, v_cache, tables, seq_lens, starts, scale):
    """`paged_attention_sdpa` with every request on the batch-invariant fixed shapes."""
    return paged_attention_sdpa(q, k_cache, v_cache, tables, seq_lens, starts, scale, fixed=[True] * len(seq_lens))


@pytest.mark.parametrize("mode, group", itertools.product(CASES, (1, 3)))
@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_fixed_shape_attention_matches_reference(dtype, group, mode):
    assert_matches_reference(_all_fixed, dtype, 8, group, CASES[mode])


def test_fixed_shape_attention_ignores_blocks_outside_live_contexts():
    before, after = outputs_before_and_after_overwriting_unread_blocks(_all_fixed, BATCHES["mixed"])
    torch.testing.assert_close(before, after, atol=0, rtol=0)
