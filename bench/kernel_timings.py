"""The Triton kernels against their torch references at a model's shapes, on CUDA (bench/gpu_engine.py)."""
from __future__ import annotations

from typing import Protocol

import torch


class Shapes(Protocol):
    hidden: int
    heads: int
    kv_heads: int
    prompt_len: int
    ranks: tuple[int, ...]
    max_adapter_slots: int


def kernel_timings(s: Shapes) -> dict:
    """Triton kernels vs their torch references at this model's shapes (ms, triton.testing.do_bench)."""
    return {"sgmv_prefill_8x350": sgmv_timing(s, num_segments=8, tokens_per_segment=s.prompt_len),
            "sgmv_decode_64x1": sgmv_timing(s, num_segments=64, tokens_per_segment=1),
            "attention_prefill_8x350": attention_timing(s, batch=8, num_new=s.prompt_len),
            "attention_decode_64": attention_timing(s, batch=64, num_new=1)}


def sgmv_timing(s: Shapes, num_segments: int, tokens_per_segment: int) -> dict:
    """q_proj-shaped LoRA over segments of mixed ranks in `max_adapter_slots` slots."""
    from triton.testing import do_bench

    from inference.kernels.reference import LoraSegment, sgmv_ref
    from inference.kernels.sgmv import sgmv_triton

    n, rank = tokens_per_segment, max(s.ranks)
    segments = [LoraSegment(i * n, (i + 1) * n, i % s.max_adapter_slots, s.ranks[i % len(s.ranks)], 2.0)
                for i in range(num_segments)]
    x = torch.randn(num_segments * n, s.hidden, device="cuda", dtype=torch.bfloat16)           # [T, in]
    y = torch.zeros_like(x)                                                                     # [T, out]
    a = torch.randn(s.max_adapter_slots, s.hidden, rank, device="cuda", dtype=torch.bfloat16) * 0.03
    b = torch.randn(s.max_adapter_slots, rank, s.hidden, device="cuda", dtype=torch.bfloat16) * 0.03
    return {"triton_ms": do_bench(lambda: sgmv_triton(y, x, a, b, segments)),
            "torch_ref_ms": do_bench(lambda: sgmv_ref(y, x, a, b, segments))}


def attention_timing(s: Shapes, batch: int, num_new: int) -> dict:
    """Each request has a prompt_len context (plus one token when decoding), 16-token blocks."""
    from triton.testing import do_bench

    from inference.kernels.reference import paged_attention_ref
    from inference.kernels.paged_attention import paged_attention_triton

    head_dim, seq_len = s.hidden // s.heads, s.prompt_len + (1 if num_new == 1 else 0)
    blocks = -(-seq_len // 16)
    kv = torch.randn(batch * blocks, 16, s.kv_heads, head_dim, device="cuda", dtype=torch.bfloat16)
    tables = torch.randperm(batch * blocks, device="cuda").view(batch, blocks)                 # [B, blocks]
    q = torch.randn(batch * num_new, s.heads, head_dim, device="cuda", dtype=torch.bfloat16)  # [T, Hq, D]
    args = (q, kv, kv, tables, [seq_len] * batch, [i * num_new for i in range(batch + 1)], head_dim ** -0.5)
    return {"triton_ms": do_bench(lambda: paged_attention_triton(*args)),
            "torch_ref_ms": do_bench(lambda: paged_attention_ref(*args))}
