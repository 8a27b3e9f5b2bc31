"""Kernel dispatch for the engine: Triton kernels on CUDA tensors, the torch references elsewhere.

`sgmv` and `paged_attention` take exactly the arguments of `sgmv_ref` and `paged_attention_ref`; off CUDA,
attention runs `paged_attention_sdpa` (grouped fused SDPA calls, checked against the reference).
Setting FINLLM_FORCE_TRITON=1 runs the Triton kernels on CPU tensors too (with TRITON_INTERPRET=1
set before the kernels are first imported), which is how the parity tests reach them without a GPU.
The references live in `inference.kernels.reference`; the Triton kernels are imported on first call.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

import torch

from inference.kernels.cpu_attention import paged_attention_sdpa
from inference.kernels.reference import LoraSegment, sgmv_ref

if TYPE_CHECKING:
    from inference.kernels.sgmv import SegmentTable

FORCE_TRITON_ENV = "FINLLM_FORCE_TRITON"


def use_triton(t: torch.Tensor) -> bool:
    """Triton for CUDA tensors when it imports; forced (and then required) by FINLLM_FORCE_TRITON=1.

    float64 always takes the torch path: the kernels multiply in at most fp32.
    """
    forced = os.environ.get(FORCE_TRITON_ENV) == "1"
    if not (t.is_cuda or forced) or t.dtype == torch.float64:
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        if forced:
            raise
        return False
    return True


def step_segments(segments: list[LoraSegment], like: torch.Tensor) -> list[LoraSegment] | SegmentTable:
    """The step's segments in the form `sgmv` takes for tensors like `like`, built once per step.

    Triton gets a device `SegmentTable` (two host-to-device copies per step instead of per module);
    the reference keeps the list.
    """
    if not segments or not use_triton(like):
        return segments
    from inference.kernels.sgmv import SegmentTable
    return SegmentTable.from_segments(segments, like.device)


def sgmv(y: torch.Tensor, x: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor,
         segments: list[LoraSegment] | SegmentTable) -> None:
    """y[i] += (x[i] @ lora_a[slot, :, :rank]) @ lora_b[slot, :rank] * scale for each segment's tokens.

    A `SegmentTable` (from `step_segments`) is only for the Triton path.
    """
    if use_triton(x):
        from inference.kernels.sgmv import sgmv_triton
        sgmv_triton(y, x, lora_a, lora_b, segments)
    else:
        sgmv_ref(y, x, lora_a, lora_b, segments)


def step_lens(seq_lens: list[int], query_start_loc: list[int],
              like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The step's lengths as device tensors for the Triton attention, built once per step (None for torch)."""
    if not seq_lens or not use_triton(like):
        return None
    from inference.kernels.paged_attention import lens_on_device
    return lens_on_device(seq_lens, query_start_loc, like.device)


def paged_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
                    seq_lens: list[int], query_start_loc: list[int], scale: float,
                    device_lens: tuple[torch.Tensor, torch.Tensor] | None = None,
                    k: torch.Tensor | None = None, v: torch.Tensor | None = None,
                    fixed: list[bool] | None = None) -> torch.Tensor:
    """q: [T, Hq, D], caches: [num_blocks, block_size, Hkv, D] -> [T, Hq, D] (causal, paged, GQA).

    `device_lens` (from `step_lens`) is only for the Triton path; the torch path uses the lists, the
    step's own `k`, `v` ([T, Hkv, D], already in the cache) where a request has no cached prefix, and
    `fixed` (batch-invariant mode: per request, whether it runs on fixed shapes; torch path only).
    """
    if use_triton(q):
        from inference.kernels.paged_attention import paged_attention_triton
        return paged_attention_triton(q, k_cache, v_cache, block_tables, seq_lens, query_start_loc, scale,
                                      device_lens)
    return paged_attention_sdpa(q, k_cache, v_cache, block_tables, seq_lens, query_start_loc, scale, k, v, fixed)
