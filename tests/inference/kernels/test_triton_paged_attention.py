"""Parity of the Triton paged attention with `paged_attention_ref`: decode, prefill, prefill over a
cached prefix, and batches mixing them; across dtypes, block sizes, GQA ratios and ragged lengths."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from inference.kernels.reference import paged_attention_ref  # noqa: E402
from inference.kernels import paged_attention  # noqa: E402
from inference.kernels.paged_attention import paged_attention_triton  # noqa: E402
from tests.inference.kernels.conftest import DEVICE, DTYPES, TOLERANCES  # noqa: E402

NUM_KV_HEADS, HEAD_DIM, NUM_BLOCKS = 2, 32, 64
# (context length after the step, new query tokens) per request; lengths straddle block boundaries
BATCHES = {
    "decode": [(1, 1), (9, 1), (16, 1), (150, 1)],
    "prefill": [(5, 5), (23, 23)],
    "prefix": [(19, 3), (40, 17), (33, 1)],
    "mixed": [(150, 1), (24, 24), (37, 12), (8, 1)],
}


def make_paged_case(dtype, block_size: int, group: int, requests, head_dim: int = HEAD_DIM, seed: int = 0):
    """Caches full of noise, each request's context scattered over shuffled blocks; q is a strided view."""
    gen = torch.Generator().manual_seed(seed)
    shape = (NUM_BLOCKS, block_size, NUM_KV_HEADS, head_dim)
    k_cache = torch.randn(shape, generator=gen).to(DEVICE, dtype)
    v_cache = torch.randn(shape, generator=gen).to(DEVICE, dtype)
    tables = torch.tensor(_block_tables([-(-seq_len // block_size) for seq_len, _ in requests], gen))
    seq_lens = [seq_len for seq_len, _ in requests]
    query_start_loc = [0]
    for _, num_new in requests:
        query_start_loc.append(query_start_loc[-1] + num_new)
    q_dim = NUM_KV_HEADS * group * head_dim
    fused = torch.randn(query_start_loc[-1], q_dim + 8, generator=gen).to(DEVICE, dtype)    # like qkv
    q = fused[:, :q_dim].view(-1, NUM_KV_HEADS * group, head_dim)                          # [T, Hq, D]
    return q, k_cache, v_cache, tables.to(DEVICE), seq_lens, query_start_loc


def _block_tables(blocks_per_request: list[int], gen: torch.Generator) -> list[list[int]]:
    """Distinct shuffled blocks per request; padding points at other live blocks, never to be read."""
    order = torch.randperm(NUM_BLOCKS, generator=gen).tolist()
    width = max(blocks_per_request) + 2
    rows, taken = [], 0
    for count in blocks_per_request:
        rows.append(order[taken:taken + count] + order[::-1][:width - count])
        taken += count
    return rows


@pytest.mark.parametrize("mode", list(BATCHES))
@pytest.mark.parametrize("group", [1, 2, 4], ids=["mha", "gqa2", "gqa4"])
@pytest.mark.parametrize("block_size", [8, 16])
@pytest.mark.parametrize("dtype", DTYPES)
def test_triton_paged_attention_matches_reference(dtype, block_size, group, mode):
    args = make_paged_case(dtype, block_size, group, BATCHES[mode])
    expected = paged_attention_ref(*args, scale=HEAD_DIM ** -0.5)
    got = paged_attention_triton(*args, scale=HEAD_DIM ** -0.5)
    atol, rtol = TOLERANCES[dtype]
    torch.testing.assert_close(got, expected, atol=atol, rtol=rtol)


@pytest.mark.parametrize("head_dim", [24, 80])
def test_triton_paged_attention_head_dim_not_power_of_two(head_dim):
    args = make_paged_case(torch.float32, 16, 2, BATCHES["mixed"], head_dim=head_dim, seed=1)
    expected = paged_attention_ref(*args, scale=0.3)
    torch.testing.assert_close(paged_attention_triton(*args, scale=0.3), expected, atol=1e-4, rtol=1e-4)


def test_triton_paged_attention_reads_only_the_requests_blocks():
    """Overwriting every block outside the live contexts must not change the output."""
    q, k_cache, v_cache, tables, seq_lens, starts = make_paged_case(torch.float32, 8, 2, BATCHES["prefix"])
    before = paged_attention_triton(q, k_cache, v_cache, tables, seq_lens, starts, 0.2)
    live = {b for row, n in zip(tables.tolist(), seq_lens) for b in row[:-(-n // 8)]}
    dead = torch.tensor(sorted(set(range(NUM_BLOCKS)) - live))
    k_cache[dead], v_cache[dead] = 1e4, -1e4
    after = paged_attention_triton(q, k_cache, v_cache, tables, seq_lens, starts, 0.2)
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
