"""Paged-attention cases shared by the kernel parity tests (Triton and the CPU SDPA path)."""
from __future__ import annotations

import torch

from inference.kernels.reference import paged_attention_ref
from tests.inference.kernels.conftest import DEVICE, TOLERANCES

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


def assert_matches_reference(attention, dtype, block_size: int, group: int, requests) -> None:
    """`attention` (same arguments as `paged_attention_ref`) agrees with the reference on one case."""
    args = make_paged_case(dtype, block_size, group, requests)
    expected = paged_attention_ref(*args, scale=HEAD_DIM ** -0.5)
    atol, rtol = TOLERANCES.get(dtype, (1e-12, 1e-12))      # float64 (torch path only): exact up to rounding
    torch.testing.assert_close(attention(*args, scale=HEAD_DIM ** -0.5), expected, atol=atol, rtol=rtol)


def outputs_before_and_after_overwriting_unread_blocks(attention, requests, block_size: int = 8):
    """`attention`'s output, then again after every block outside the live contexts is overwritten."""
    q, k_cache, v_cache, tables, seq_lens, starts = make_paged_case(torch.float32, block_size, 2, requests)
    before = attention(q, k_cache, v_cache, tables, seq_lens, starts, 0.2)
    live = {b for row, n in zip(tables.tolist(), seq_lens) for b in row[:-(-n // block_size)]}
    dead = torch.tensor(sorted(set(range(NUM_BLOCKS)) - live))
    k_cache[dead], v_cache[dead] = 1e4, -1e4
    return before, attention(q, k_cache, v_cache, tables, seq_lens, starts, 0.2)
