"""Parity of the Triton paged attention with `paged_attention_ref`: decode, prefill, prefill over a
cached prefix, and batches mixing them; across dtypes, block sizes, GQA ratios and ragged lengths."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from inference.kernels.reference import paged_attention_ref  # noqa: E402
from inference.kernels import paged_attention  # noqa: E402
from inference.kernels.paged_attention import paged_attention_triton  # noqa: E402
from tests.inference.kernels.conftest import DTYPES, TOLERANCES  # noqa: E402
from tests.inference.kernels.paged_cases import (  # noqa: E402
    BATCHES, HEAD_DIM, assert_matches_reference, make_paged_case, outputs_before_and_after_overwriting_unread_blocks)


@pytest.mark.parametrize("mode", list(BATCHES))
@pytest.mark.parametrize("group", [1, 2, 4], ids=["mha", "gqa2", "gqa4"])
@pytest.mark.parametrize("block_size", [8, 16])
@pytest.mark.parametrize("dtype", DTYPES)
def test_triton_paged_attention_matches_reference(dtype, block_size, group, mode):
    assert_matches_reference(paged_attention_triton, dtype, block_size, group, BATCHES[mode])


@pytest.mark.parametrize("head_dim", [24, 80])
def test_triton_paged_attention_head_dim_not_power_of_two(head_dim):
    args = make_paged_case(torch.float32, 16, 2, BATCHES["mixed"], head_dim=head_dim, seed=1)
    expected = paged_attention_ref(*args, scale=0.3)
    torch.testing.assert_close(paged_attention_triton(*args, scale=0.3), expected, atol=1e-4, rtol=1e-4)


def test_triton_paged_attention_reads_only_the_requests_blocks():
    """Overwriting every block outside the live contexts must not change the output."""
    before, after = outputs_before_and_after_overwriting_unread_blocks(paged_attention_triton, BATCHES["prefix"])
    assert torch.equal(before, after)


def test_triton_paged_attention_rejects_head_mismatch():
    q, k_cache, v_cache, tables, seq_lens, starts = make_paged_case(torch.float32, 8, 2, BATCHES["decode"])
    with pytest.raises(ValueError, match="kv heads"):
        paged_attention_triton(q[:, :3], k_cache, v_cache, tables, seq_lens, starts, 0.2)
    with pytest.raises(ValueError, match="query_start_loc"):
        paged_attention_triton(q, k_cache, v_cache, tables, seq_lens, starts[:-1], 0.2)


def test_triton_paged_attention_dispatcher_matches_reference():
    args = make_paged_case(torch.bfloat16, 16, 4, BATCHES["mixed"], seed=2)
    expected = paged_attention_ref(*args, scale=HEAD_DIM ** -0.5)
    atol, rtol = TOLERANCES[torch.bfloat16]
    torch.testing.assert_close(paged_attention(*args, scale=HEAD_DIM ** -0.5), expected, atol=atol, rtol=rtol)
