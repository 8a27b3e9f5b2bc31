"""The torch reference ops the Triton kernels replace, and the segment type they share.

Every op here is the definition its kernel is checked against (tests/inference/kernels) and the path
the dispatchers in `inference.kernels` take off CUDA. Imports nothing of the engine.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True, slots=True)
class LoraSegment:
    """Tokens [start, end) of the step all use the adapter in `slot`."""

    start: int
    end: int
    slot: int
    rank: int
    scale: float


def sgmv_ref(y: torch.Tensor, x: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor,
             segments: list[LoraSegment]) -> None:
    """Add each token's own LoRA delta to `y` in place (segmented gather matmul).

    x: [T, in], y: [T, out], lora_a: [S, in, R], lora_b: [S, R, out] (S slots, R max rank).
        for seg in segments:
            for i in range(seg.start, seg.end):
                y[i] += (x[i] @ lora_a[seg.slot, :, :seg.rank]) @ lora_b[seg.slot, :seg.rank] * seg.scale
    """
    for seg in segments:
        shrunk = x[seg.start:seg.end] @ lora_a[seg.slot, :, :seg.rank]        # [n, r]
        y[seg.start:seg.end] += (shrunk @ lora_b[seg.slot, :seg.rank]) * seg.scale


def paged_attention_ref(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                        block_tables: torch.Tensor, seq_lens: list[int],
                        query_start_loc: list[int], scale: float) -> torch.Tensor:
    """Causal attention of each request's new queries over its paged context.

    q: [T, Hq, D]; k_cache, v_cache: [num_blocks, block_size, Hkv, D]; returns [T, Hq, D].
        for b in range(B):
            keys = k_cache[block_tables[b]].flatten(0, 1)[:seq_lens[b]]   # likewise values
            out[qs[b]:qs[b+1]] = softmax(q[qs[b]:qs[b+1]] @ keys^T * scale, causal offset seq_len - n_q) @ values
    """
    out = torch.empty_like(q)
    block_size = k_cache.shape[1]
    for b, seq_len in enumerate(seq_lens):
        start, end = query_start_loc[b], query_start_loc[b + 1]
        blocks = block_tables[b, :-(-seq_len // block_size)]
        keys = k_cache[blocks].flatten(0, 1)[:seq_len].transpose(0, 1)      # [Hkv, S, D]
        values = v_cache[blocks].flatten(0, 1)[:seq_len].transpose(0, 1)    # [Hkv, S, D]
        out[start:end] = _attend(q[start:end].transpose(0, 1), keys, values, scale).transpose(0, 1)
    return out


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """q: [Hq, n, D] (the last n of S positions), k, v: [Hkv, S, D] -> [Hq, n, D]."""
    n, seq_len = q.shape[1], k.shape[1]
    mask = None
    if n > 1:
        rows = torch.arange(n, device=q.device)[:, None] + (seq_len - n)
        mask = torch.arange(seq_len, device=q.device)[None, :] <= rows              # [n, S]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale,
                                          enable_gqa=k.shape[0] != q.shape[0])
