"""Multi-LoRA SGMV (segmented gather matrix-vector) in Triton: shrink, then expand in place.

Tokens are grouped by adapter into segments (as in Punica). Same semantics as `sgmv_ref`:
    for seg in segments:
        for i in range(seg.start, seg.end):
            y[i] += (x[i] @ lora_a[seg.slot, :, :seg.rank]) @ lora_b[seg.slot, :seg.rank] * seg.scale
Columns of the slot stacks beyond a segment's rank are masked, so ranks 1..R mix in one launch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import triton
import triton.language as tl

from inference.kernels.tiles import dot_in_fp32, tile_dot, tile_size

if TYPE_CHECKING:
    from inference.kernels.reference import LoraSegment


@dataclass(frozen=True, slots=True)
class SegmentTable:
    """The step's segments as device tensors, each [num_segments]."""

    starts: torch.Tensor        # int32, first token
    ends: torch.Tensor          # int32, one past the last token
    slots: torch.Tensor         # int32, adapter slot
    ranks: torch.Tensor         # int32, adapter rank
    scales: torch.Tensor        # float32, alpha / r
    max_segment_len: int

    @classmethod
    def from_segments(cls, segments: list[LoraSegment], device: torch.device) -> "SegmentTable":
        ints = torch.tensor([[s.start, s.end, s.slot, s.rank] for s in segments], dtype=torch.int32).view(-1, 4)
        ints = ints.t().contiguous().to(device, non_blocking=True)                    # [4, n]
        scales = torch.tensor([s.scale for s in segments], dtype=torch.float32).to(device, non_blocking=True)
        longest = max((s.end - s.start for s in segments), default=0)
        return cls(ints[0], ints[1], ints[2], ints[3], scales, longest)


@triton.jit
def _shrink_kernel(x_ptr, a_ptr, out_ptr, starts_ptr, ends_ptr, slots_ptr, ranks_ptr, in_features,
                   stride_xt, stride_xk, stride_as, stride_ak, stride_ar, stride_ot, stride_or, max_rank,
                   BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr, DOT_FP32: tl.constexpr):
    seg, tile = tl.program_id(0), tl.program_id(1)
    start, end = tl.load(starts_ptr + seg), tl.load(ends_ptr + seg)
    if start + tile * BLOCK_M >= end:
        return
    rows = start + tile * BLOCK_M + tl.arange(0, BLOCK_M)                       # [M]
    cols = tl.arange(0, BLOCK_R)                                                # [R]
    row_ok, col_ok = rows < end, cols < tl.load(ranks_ptr + seg)
    a_base = a_ptr + tl.load(slots_ptr + seg).to(tl.int64) * stride_as
    acc = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)
    for k0 in range(0, in_features, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)                                         # [K]
        k_ok = ks < in_features
        x = tl.load(x_ptr + rows[:, None] * stride_xt + ks[None, :] * stride_xk,
                    mask=row_ok[:, None] & k_ok[None, :], other=0.0)            # [M, K]
        a = tl.load(a_base + ks[:, None] * stride_ak + cols[None, :] * stride_ar,
                    mask=k_ok[:, None] & col_ok[None, :], other=0.0)            # [K, R]
        acc += tile_dot(x, a, DOT_FP32)
    tl.store(out_ptr + rows[:, None] * stride_ot + cols[None, :] * stride_or, acc,
             mask=row_ok[:, None] & (cols[None, :] < max_rank))


@triton.jit
def _expand_kernel(y_ptr, s_ptr, b_ptr, starts_ptr, ends_ptr, slots_ptr, ranks_ptr, scales_ptr, out_features,
                   stride_yt, stride_yn, stride_st, stride_sr, stride_bs, stride_br, stride_bn,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr, DOT_FP32: tl.constexpr):
    seg, tile_m, tile_n = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    start, end = tl.load(starts_ptr + seg), tl.load(ends_ptr + seg)
    if start + tile_m * BLOCK_M >= end:
        return
    rows = start + tile_m * BLOCK_M + tl.arange(0, BLOCK_M)                     # [M]
    cols = tl.arange(0, BLOCK_R)                                                # [R]
    ns = tile_n * BLOCK_N + tl.arange(0, BLOCK_N)                               # [N]
    row_ok, col_ok, n_ok = rows < end, cols < tl.load(ranks_ptr + seg), ns < out_features
    b_base = b_ptr + tl.load(slots_ptr + seg).to(tl.int64) * stride_bs
    b = tl.load(b_base + cols[:, None] * stride_br + ns[None, :] * stride_bn,
                mask=col_ok[:, None] & n_ok[None, :], other=0.0)                # [R, N]
    s = tl.load(s_ptr + rows[:, None] * stride_st + cols[None, :] * stride_sr,
                mask=row_ok[:, None] & col_ok[None, :], other=0.0)              # [M, R] fp32
    delta = tile_dot(s.to(b.dtype), b, DOT_FP32) * tl.load(scales_ptr + seg)   # [M, N]
    y_ptrs = y_ptr + rows[:, None] * stride_yt + ns[None, :] * stride_yn
    y_mask = row_ok[:, None] & n_ok[None, :]
    y = tl.load(y_ptrs, mask=y_mask, other=0.0)
    tl.store(y_ptrs, (y.to(tl.float32) + delta).to(y.dtype), mask=y_mask)


def sgmv_shrink(x: torch.Tensor, lora_a: torch.Tensor, seg_starts: torch.Tensor, seg_ends: torch.Tensor,
                seg_slots: torch.Tensor, seg_ranks: torch.Tensor, max_segment_len: int) -> torch.Tensor:
    """x: [T, in], lora_a: [S, in, R] -> fp32 [T, R]: row i is x[i] @ lora_a[slot, :, :rank] (zero past rank
    and on tokens outside every segment)."""
    _check_shrink(x, lora_a)
    max_rank = lora_a.shape[2]
    out = torch.zeros(x.shape[0], max_rank, dtype=torch.float32, device=x.device)   # [T, R]
    if seg_starts.numel() == 0 or max_segment_len == 0:
        return out
    block_m = tile_size(max_segment_len, 16, 64)
    block_k = 64 if x.is_cuda else tile_size(x.shape[1], 16, 512)
    grid = (seg_starts.numel(), triton.cdiv(max_segment_len, block_m))
    _shrink_kernel[grid](x, lora_a, out, seg_starts, seg_ends, seg_slots, seg_ranks, x.shape[1],
                         *x.stride(), *lora_a.stride(), *out.stride(), max_rank,
                         BLOCK_M=block_m, BLOCK_K=block_k, BLOCK_R=tile_size(max_rank, 16, 1 << 30),
                         DOT_FP32=dot_in_fp32(x))
    return out


def sgmv_expand(y: torch.Tensor, shrunk: torch.Tensor, lora_b: torch.Tensor, seg_starts: torch.Tensor,
                seg_ends: torch.Tensor, seg_slots: torch.Tensor, seg_ranks: torch.Tensor,
                seg_scales: torch.Tensor, max_segment_len: int) -> None:
    """y: [T, out] (any strides) += (shrunk[i, :rank] @ lora_b[slot, :rank]) * scale, in place.

    shrunk: [T, R] (fp32 from `sgmv_shrink`), lora_b: [S, R, out].
    """
    _check_expand(y, shrunk, lora_b)
    if seg_starts.numel() == 0 or max_segment_len == 0:
        return
    block_m = tile_size(max_segment_len, 16, 64)
    block_n = 64 if y.is_cuda else tile_size(y.shape[1], 16, 512)
    grid = (seg_starts.numel(), triton.cdiv(max_segment_len, block_m), triton.cdiv(y.shape[1], block_n))
    _expand_kernel[grid](y, shrunk, lora_b, seg_starts, seg_ends, seg_slots, seg_ranks, seg_scales, y.shape[1],
                         *y.stride(), *shrunk.stride(), *lora_b.stride(),
                         BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_R=tile_size(lora_b.shape[1], 16, 1 << 30),
                         DOT_FP32=dot_in_fp32(y))


def sgmv_triton(y: torch.Tensor, x: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor,
                segments: list[LoraSegment] | SegmentTable) -> None:
    """Drop-in for `sgmv_ref`: x: [T, in], y: [T, out], lora_a: [S, in, R], lora_b: [S, R, out].

    A caller applying the same segments to many modules may pass one `SegmentTable` built per step,
    saving two host-to-device copies per call.
    """
    table = segments if isinstance(segments, SegmentTable) else SegmentTable.from_segments(segments, x.device)
    if table.max_segment_len == 0:
        return
    shrunk = sgmv_shrink(x, lora_a, table.starts, table.ends, table.slots, table.ranks, table.max_segment_len)
    sgmv_expand(y, shrunk, lora_b, table.starts, table.ends, table.slots, table.ranks, table.scales,
                table.max_segment_len)


def _check_shrink(x: torch.Tensor, lora_a: torch.Tensor) -> None:
    if x.dim() != 2 or lora_a.dim() != 3 or x.shape[1] != lora_a.shape[1]:
        raise ValueError(f"sgmv_shrink wants x [T, in] and lora_a [S, in, R], got {tuple(x.shape)}, "
                         f"{tuple(lora_a.shape)}")


def _check_expand(y: torch.Tensor, shrunk: torch.Tensor, lora_b: torch.Tensor) -> None:
    if (y.dim() != 2 or lora_b.dim() != 3 or shrunk.shape != (y.shape[0], lora_b.shape[1])
            or y.shape[1] != lora_b.shape[2]):
        raise ValueError(f"sgmv_expand wants y [T, out], shrunk [T, R], lora_b [S, R, out], got "
                         f"{tuple(y.shape)}, {tuple(shrunk.shape)}, {tuple(lora_b.shape)}")
