"""Parity of the Triton SGMV kernels with `sgmv_ref` across dtypes, ranks, adapter counts and sizes."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from inference.kernels.reference import LoraSegment, sgmv_ref  # noqa: E402
from inference.kernels import sgmv, use_triton  # noqa: E402
from inference.kernels.sgmv import SegmentTable, sgmv_shrink, sgmv_triton  # noqa: E402
from tests.inference.kernels.conftest import DEVICE, DTYPES, TOLERANCES  # noqa: E402

IN_FEATURES, OUT_FEATURES, NUM_SLOTS, MAX_RANK = 48, 40, 4, 64
RANKS = {"r1": (1,), "r8": (8,), "r16": (16,), "r64": (64,), "mixed": (13, 1, 64)}
# (tokens without an adapter before it, tokens of the segment): a short one, one over a 64-row tile, a decode
SEGMENT_SHAPES = ((3, 5), (0, 70), (2, 1))


def make_slot_stacks(dtype: torch.dtype, seed: int = 0):
    """lora_a: [S, in, R], lora_b: [S, R, out]; columns past each adapter's rank hold noise the kernel must mask."""
    gen = torch.Generator().manual_seed(seed)
    lora_a = torch.randn(NUM_SLOTS, IN_FEATURES, MAX_RANK, generator=gen) * 0.3
    lora_b = torch.randn(NUM_SLOTS, MAX_RANK, OUT_FEATURES, generator=gen) * 0.3
    return lora_a.to(DEVICE, dtype), lora_b.to(DEVICE, dtype)


def make_segments(ranks: list[int], slots: list[int]) -> tuple[list[LoraSegment], int]:
    segments, start = [], 0
    for i, (rank, slot) in enumerate(zip(ranks, slots)):
        gap, length = SEGMENT_SHAPES[i % len(SEGMENT_SHAPES)]
        start += gap
        segments.append(LoraSegment(start, start + length, slot, rank, scale=0.5 + i))
        start += length
    return segments, start + 4          # 4 trailing tokens without an adapter


def make_case(dtype: torch.dtype, rank_set: tuple[int, ...], num_adapters: int, seed: int = 0):
    ranks = [rank_set[i % len(rank_set)] for i in range(num_adapters)]
    slots = [3, 0, 2][:num_adapters]
    segments, num_tokens = make_segments(ranks, slots)
    lora_a, lora_b = make_slot_stacks(dtype, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(num_tokens, IN_FEATURES, generator=gen).to(DEVICE, dtype)                 # [T, in]
    wide = torch.randn(num_tokens, OUT_FEATURES + 16, generator=gen).to(DEVICE, dtype)        # [T, out + 16]
    return x, wide, lora_a, lora_b, segments


@pytest.mark.parametrize("num_adapters", [1, 3])
@pytest.mark.parametrize("rank_set", list(RANKS.values()), ids=list(RANKS))
@pytest.mark.parametrize("dtype", DTYPES)
def test_triton_sgmv_matches_reference(dtype, rank_set, num_adapters):
    x, wide, lora_a, lora_b, segments = make_case(dtype, rank_set, num_adapters)
    expected, got = wide.clone(), wide.clone()
    sgmv_ref(expected[:, 8:8 + OUT_FEATURES], x, lora_a, lora_b, segments)
    sgmv_triton(got[:, 8:8 + OUT_FEATURES], x, lora_a, lora_b, segments)     # y is a strided view, like qkv
    atol, rtol = TOLERANCES[dtype]
    torch.testing.assert_close(got, expected, atol=atol, rtol=rtol)
    assert (expected - wide).abs().amax() > 0.5                              # the delta is not negligible


@pytest.mark.parametrize("rank_set", [RANKS["r8"], RANKS["mixed"]], ids=["r8", "mixed"])
def test_triton_sgmv_shrink_masks_columns_past_rank(rank_set):
    x, _, lora_a, _, segments = make_case(torch.float32, rank_set, 3)
    table = SegmentTable.from_segments(segments, DEVICE)
    shrunk = sgmv_shrink(x, lora_a, table.starts, table.ends, table.slots, table.ranks, table.max_segment_len)
    expected = torch.zeros(x.shape[0], MAX_RANK, device=DEVICE)                # [T, R]
    for seg in segments:
        expected[seg.start:seg.end, :seg.rank] = x[seg.start:seg.end] @ lora_a[seg.slot, :, :seg.rank]
    torch.testing.assert_close(shrunk, expected, atol=1e-4, rtol=1e-4)


def test_triton_sgmv_accepts_a_prebuilt_segment_table():
    x, wide, lora_a, lora_b, segments = make_case(torch.bfloat16, RANKS["mixed"], 3)
    expected, got = wide.clone(), wide.clone()
    sgmv_triton(expected, x, lora_a, torch.cat([lora_b, lora_b[..., :16]], dim=2), segments)
    sgmv_triton(got, x, lora_a, torch.cat([lora_b, lora_b[..., :16]], dim=2),
                SegmentTable.from_segments(segments, DEVICE))
    assert torch.equal(got, expected)


def test_triton_sgmv_without_segments_leaves_y_unchanged():
    x, wide, lora_a, lora_b, _ = make_case(torch.float32, (8,), 1)
    got = wide.clone()
    sgmv_triton(got[:, :OUT_FEATURES], x, lora_a, lora_b, [])
    assert torch.equal(got, wide)


def test_triton_sgmv_rejects_mismatched_features():
    x, wide, lora_a, lora_b, segments = make_case(torch.float32, (8,), 1)
    with pytest.raises(ValueError, match="lora_a"):
        sgmv_triton(wide[:, :OUT_FEATURES], x[:, :-1], lora_a, lora_b, segments)
    with pytest.raises(ValueError, match="lora_b"):
        sgmv_triton(wide, x, lora_a, lora_b, segments)


def test_triton_dispatch_follows_device_and_force_flag(monkeypatch):
    x, wide, lora_a, lora_b, segments = make_case(torch.float32, RANKS["mixed"], 3)
    assert use_triton(x)
    expected, got = wide.clone(), wide.clone()
    sgmv_ref(expected[:, :OUT_FEATURES], x, lora_a, lora_b, segments)
    sgmv(got[:, :OUT_FEATURES], x, lora_a, lora_b, segments)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    monkeypatch.delenv("FINLLM_FORCE_TRITON")
    assert use_triton(x) == x.is_cuda
    assert not use_triton(torch.zeros(1))
