"""Helpers shared by the Triton kernels: the matmul policy and tile sizes."""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def tile_dot(a, b, DOT_FP32: tl.constexpr):
    """a: [M, K] @ b: [K, N] -> fp32 [M, N].

    With DOT_FP32 the operands are upcast and multiplied in IEEE fp32: float32 inputs keep full
    precision on GPU (no TF32), and the CPU interpreter, whose bf16 `tl.dot` is wrong, stays exact.
    """
    if DOT_FP32:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    return tl.dot(a, b)


def dot_in_fp32(t: torch.Tensor) -> bool:
    """CPU tensors mean the Triton interpreter; float32 means the caller wants full precision."""
    return not t.is_cuda or t.dtype == torch.float32


def tile_size(n: int, low: int, high: int) -> int:
    """The power of two covering n, clamped to [low, high] (tl.dot needs every side >= 16)."""
    return min(max(triton.next_power_of_2(max(n, 1)), low), high)
