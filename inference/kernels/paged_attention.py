"""Paged attention in Triton: causal attention of each request's new queries over its KV blocks.

Same semantics as `paged_attention_ref` (decode is one query per request; prefill with a cached
prefix has n queries at positions seq_len - n .. seq_len - 1). One program owns one request, one KV
head and BLOCK_M rows of (query token, query head of that KV head's group), so GQA shares each K/V
tile across the group. It walks the context BLOCK_N positions at a time, gathering every position's
slot through the block table, and keeps an online (running max, running sum) softmax.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from inference.kernels.tiles import dot_in_fp32, tile_dot, tile_size


@triton.jit
def _paged_attention_kernel(q_ptr, k_ptr, v_ptr, out_ptr, tables_ptr, seq_lens_ptr, query_start_ptr, scale_log2,
                            stride_qt, stride_qh, stride_qd, stride_kb, stride_ko, stride_kh, stride_kd,
                            stride_vb, stride_vo, stride_vh, stride_vd, stride_ot, stride_oh, stride_od, stride_tb,
                            GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                            PAGE_SIZE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                            DOT_FP32: tl.constexpr):
    req, kv_head, tile = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    q_start, q_end = tl.load(query_start_ptr + req), tl.load(query_start_ptr + req + 1)
    seq_len = tl.load(seq_lens_ptr + req)
    num_rows = (q_end - q_start) * GROUP
    if tile * BLOCK_M >= num_rows:
        return
    rows = tile * BLOCK_M + tl.arange(0, BLOCK_M)                               # [M]
    row_ok = rows < num_rows
    token, head = rows // GROUP, kv_head * GROUP + rows % GROUP                 # [M]
    q_pos = seq_len - (q_end - q_start) + token                                 # [M] absolute position
    dims = tl.arange(0, BLOCK_D)
    dim_ok = dims < HEAD_DIM
    q_off = (q_start + token)[:, None] * stride_qt + head[:, None] * stride_qh + dims[None, :] * stride_qd
    q = tl.load(q_ptr + q_off, mask=row_ok[:, None] & dim_ok[None, :], other=0.0)   # [M, D]
    last_token = (tl.minimum(tile * BLOCK_M + BLOCK_M, num_rows) - 1) // GROUP
    kv_len = seq_len - (q_end - q_start) + last_token + 1                      # causal bound of this tile
    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)                  # running max (log2 units)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)                                # running sum of exp2
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    for n0 in range(0, kv_len, BLOCK_N):
        pos = n0 + tl.arange(0, BLOCK_N)                                        # [N]
        pos_ok = pos < kv_len
        block = tl.load(tables_ptr + req * stride_tb + pos // PAGE_SIZE, mask=pos_ok, other=0).to(tl.int64)
        offset = pos % PAGE_SIZE
        kv_mask = pos_ok[:, None] & dim_ok[None, :]
        k = tl.load(k_ptr + block[:, None] * stride_kb + offset[:, None] * stride_ko + kv_head * stride_kh
                    + dims[None, :] * stride_kd, mask=kv_mask, other=0.0)      # [N, D]
        v = tl.load(v_ptr + block[:, None] * stride_vb + offset[:, None] * stride_vo + kv_head * stride_vh
                    + dims[None, :] * stride_vd, mask=kv_mask, other=0.0)      # [N, D]
        scores = tile_dot(q, tl.trans(k), DOT_FP32) * scale_log2               # [M, N]
        visible = pos_ok[None, :] & (pos[None, :] <= q_pos[:, None])
        scores = tl.where(visible, scores, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(scores, axis=1))
        p = tl.exp2(scores - m_new[:, None])                                    # [M, N]
        correction = tl.exp2(m_i - m_new)
        l_i = l_i * correction + tl.sum(p, axis=1)
        acc = acc * correction[:, None] + tile_dot(p.to(v.dtype), v, DOT_FP32)
        m_i = m_new
    out = acc / l_i[:, None]
    o_off = (q_start + token)[:, None] * stride_ot + head[:, None] * stride_oh + dims[None, :] * stride_od
    tl.store(out_ptr + o_off, out.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & dim_ok[None, :])


def paged_attention_triton(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                           block_tables: torch.Tensor, seq_lens: list[int],
                           query_start_loc: list[int], scale: float,
                           device_lens: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Drop-in for `paged_attention_ref`.

    q: [T, Hq, D]; k_cache, v_cache: [num_blocks, block_size, Hkv, D]; block_tables: [B, max_blocks];
    seq_lens: [B] context length including this step's tokens; query_start_loc: [B + 1]. Returns [T, Hq, D].
    `device_lens` is (seq_lens, query_start_loc) already on q's device as int32, built once per step;
    the kernel then reads those, and the lists only size the grid (a CUDA graph replays new values
    through the same tensors).
    """
    _check(q, k_cache, v_cache, block_tables, seq_lens, query_start_loc)
    out = torch.empty_like(q)
    if not seq_lens:
        return out
    num_kv_heads, head_dim = k_cache.shape[2], k_cache.shape[3]
    group = q.shape[1] // num_kv_heads
    max_rows = max(e - s for s, e in zip(query_start_loc, query_start_loc[1:])) * group
    block_m = tile_size(max_rows, 16, 64)
    block_n = 64 if q.is_cuda else 128
    seq_lens_dev, query_start_dev = device_lens or lens_on_device(seq_lens, query_start_loc, q.device)
    grid = (len(seq_lens), num_kv_heads, triton.cdiv(max_rows, block_m))
    _paged_attention_kernel[grid](
        q, k_cache, v_cache, out, block_tables, seq_lens_dev, query_start_dev,
        scale * math.log2(math.e), *q.stride(), *k_cache.stride(), *v_cache.stride(), *out.stride(),
        block_tables.stride(0), GROUP=group, HEAD_DIM=head_dim, BLOCK_D=tile_size(head_dim, 16, 1 << 30),
        PAGE_SIZE=k_cache.shape[1], BLOCK_M=block_m, BLOCK_N=block_n, DOT_FP32=dot_in_fp32(q))
    return out


def lens_on_device(seq_lens: list[int], query_start_loc: list[int],
                   device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(seq_lens, query_start_loc) as int32 tensors on `device`, in one host-to-device copy."""
    packed = torch.tensor(list(seq_lens) + list(query_start_loc), dtype=torch.int32).to(device, non_blocking=True)
    return packed[:len(seq_lens)], packed[len(seq_lens):]


def _check(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
           seq_lens: list[int], query_start_loc: list[int]) -> None:
    if q.dim() != 3 or k_cache.dim() != 4 or k_cache.shape != v_cache.shape:
        raise ValueError(f"want q [T, Hq, D] and caches [blocks, block_size, Hkv, D], got {tuple(q.shape)}, "
                         f"{tuple(k_cache.shape)}, {tuple(v_cache.shape)}")
    if q.shape[2] != k_cache.shape[3] or q.shape[1] % k_cache.shape[2]:
        raise ValueError(f"q heads {q.shape[1]} x dim {q.shape[2]} do not fit {k_cache.shape[2]} kv heads "
                         f"x dim {k_cache.shape[3]}")
    if len(query_start_loc) != len(seq_lens) + 1 or block_tables.shape[0] < len(seq_lens):
        raise ValueError(f"{len(seq_lens)} requests need {len(seq_lens) + 1} query_start_loc entries and as many "
                         f"block table rows, got {len(query_start_loc)} and {block_tables.shape[0]}")
