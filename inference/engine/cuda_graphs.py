"""Decode steps replayed as CUDA graphs, one graph per padded batch size (as vLLM does).

A decode step (one new token per request) is dozens of kernel launches per layer; at small batches the
GPU waits on the host to launch them. Each captured graph runs the whole forward over static input
buffers: the step's tokens are copied into the first `n` rows, rows `n..size` are padding whose K/V
go to a scratch block no request owns, and the graph is replayed. Everything the kernels read per
step (lengths, block tables, each token's adapter slot, rank and scale) lives in those buffers, so
one graph serves any decode batch up to its size, any adapters and any context lengths.

LoRA in a graph is per token (Punica's BGMV): segment i is token i, with rank 0 for tokens without
an adapter and for padding. Graphs are captured lazily, on the first decode step of each
(size, with LoRA) pair, after one eager run that compiles the Triton kernels.

`capture=False` runs the same padded, static-buffer forward eagerly: that is how CPU tests check the
padding and per-token LoRA layout against the engine's ordinary path.
"""
from __future__ import annotations

import bisect
from typing import TYPE_CHECKING

import torch

from inference.engine.lora import LoraBatch, LoraSlotWeights
from inference.engine.model import AttentionMetadata, Transformer
from inference.engine.scheduler import ScheduledChunk
from inference.kernels import use_triton
from inference.kernels.reference import LoraSegment

if TYPE_CHECKING:
    from inference.kernels.sgmv import SegmentTable

_NO_OP = LoraSegment(0, 1, 0, 0, 0.0)    # rank 0: adds nothing


class DecodeGraphs:
    """Static buffers for `max(sizes)` decode tokens and the graphs captured over them."""

    def __init__(self, model: Transformer, kv_cache: torch.Tensor, lora_weights: LoraSlotWeights,
                 sizes: tuple[int, ...], block_size: int, max_blocks_per_seq: int, scratch_block: int,
                 capture: bool) -> None:
        self.model, self.kv_cache, self.lora_weights = model, kv_cache, lora_weights
        self.sizes = sorted(set(sizes))
        self.block_size, self.width, self.capture = block_size, max_blocks_per_seq, capture
        self.scratch_block = scratch_block
        device, n = model.embed.device, self.sizes[-1]
        longs = lambda *shape: torch.zeros(*shape, dtype=torch.long, device=device)   # noqa: E731
        ints = lambda *shape: torch.zeros(*shape, dtype=torch.int32, device=device)   # noqa: E731
        self.input_ids, self.positions, self.slot_mapping = longs(n), longs(n), longs(n)
        self.block_tables = longs(n, max_blocks_per_seq)
        self.seq_lens, self.query_start = ints(n), torch.arange(n + 1, dtype=torch.int32, device=device)
        self.seg_starts, self.seg_ends = self.query_start[:-1], self.query_start[1:]
        self.seg_slots, self.seg_ranks = ints(n), ints(n)
        self.seg_scales = torch.zeros(n, dtype=torch.float32, device=device)
        self.graphs: dict[tuple[int, bool], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.pool = None
        self.num_replays = 0

    def fits(self, chunks: list[ScheduledChunk], block_tables: dict[str, list[int]]) -> bool:
        """A pure decode step (one token per request) small enough for the largest graph."""
        return (0 < len(chunks) <= self.sizes[-1] and all(c.num_new_tokens == 1 for c in chunks)
                and all(len(block_tables[c.request.request_id]) <= self.width for c in chunks))

    def run(self, chunks: list[ScheduledChunk], block_tables: dict[str, list[int]],
            slot_of: dict[str, int]) -> torch.Tensor:
        """Hidden states [len(chunks), H] of the step, row b for chunks[b]."""
        n = len(chunks)
        size = self.sizes[bisect.bisect_left(self.sizes, n)]
        with_lora = any(c.request.adapter is not None for c in chunks)
        if not self.capture:
            return self._forward(size, with_lora, *self._fill(chunks, block_tables, slot_of, size))[:n]
        key = (size, with_lora)
        if key not in self.graphs:
            self.graphs[key] = self._capture(size, with_lora)
        self._fill(chunks, block_tables, slot_of, size)
        graph, hidden = self.graphs[key]
        graph.replay()
        self.num_replays += 1
        return hidden[:n]

    def _fill(self, chunks: list[ScheduledChunk], block_tables: dict[str, list[int]],
              slot_of: dict[str, int], size: int) -> tuple[list[int], list[LoraSegment]]:
        """Copy the step into rows [0, n) and padding into [n, size): one host-to-device copy per buffer.

        Padding reads and writes the scratch block, with context length 1 and LoRA rank 0. Returns the
        rows' context lengths and LoRA segments as host lists (what the torch path reads).
        """
        bs, pad = self.block_size, size - len(chunks)
        positions = [c.start for c in chunks]
        tables = [block_tables[c.request.request_id] for c in chunks]
        width = max((len(t) for t in tables), default=1)
        rows = [t + [self.scratch_block] * (width - len(t)) for t in tables] + [[self.scratch_block] * width] * pad
        adapters = [c.request.adapter for c in chunks]
        slots = [0 if a is None else slot_of[a] for a in adapters] + [0] * pad
        ranks = [self.lora_weights.ranks[s] if a is not None else 0 for a, s in zip(adapters, slots)] + [0] * pad
        scales = [self.lora_weights.scales[s] if r else 0.0 for s, r in zip(slots, ranks)]
        seq_lens = [p + 1 for p in positions] + [1] * pad
        copy = lambda dst, values, dtype: dst.copy_(torch.tensor(values, dtype=dtype), non_blocking=True)  # noqa: E731
        copy(self.input_ids[:size], [c.request.token_ids[c.start] for c in chunks] + [0] * pad, torch.long)
        copy(self.positions[:size], positions + [0] * pad, torch.long)
        copy(self.slot_mapping[:size], [t[p // bs] * bs + p % bs for t, p in zip(tables, positions)]
             + [self.scratch_block * bs] * pad, torch.long)
        copy(self.block_tables[:size, :width], rows, torch.long)
        copy(self.seq_lens[:size], seq_lens, torch.int32)
        copy(self.seg_slots[:size], slots, torch.int32)
        copy(self.seg_ranks[:size], ranks, torch.int32)
        copy(self.seg_scales[:size], scales, torch.float32)
        segments = [LoraSegment(i, i + 1, s, r, k) for i, (s, r, k) in enumerate(zip(slots, ranks, scales)) if r]
        return seq_lens, segments

    def _forward(self, size: int, with_lora: bool, seq_lens: list[int],
                 segments: list[LoraSegment]) -> torch.Tensor:
        """The forward over the first `size` rows of the buffers.

        The Triton path reads lengths and segments from the buffers (the lists only size its grids: every
        row is one query token), so a captured graph serves later steps; the torch path reads the lists.
        """
        attn = AttentionMetadata(self.slot_mapping[:size], self.block_tables[:size], seq_lens,
                                 list(range(size + 1)), (self.seq_lens[:size], self.query_start[:size + 1]))
        lora = LoraBatch(self.lora_weights, *self._lora_segments(size, segments)) if with_lora else None
        return self.model.forward(self.input_ids[:size], self.positions[:size], attn, self.kv_cache, lora)

    def _lora_segments(self, size: int, segments: list[LoraSegment]
                       ) -> tuple[list[LoraSegment], list[LoraSegment] | SegmentTable]:
        """(segments, kernel segments) of a `LoraBatch`: the device table over the buffers for Triton
        (the list is a placeholder: a graph always applies LoRA); the step's own list for torch."""
        if use_triton(self.model.embed):
            from inference.kernels.sgmv import SegmentTable
            table = SegmentTable(self.seg_starts[:size], self.seg_ends[:size], self.seg_slots[:size],
                                 self.seg_ranks[:size], self.seg_scales[:size], max_segment_len=1)
            return [_NO_OP], table
        return segments or [_NO_OP], segments

    def _capture(self, size: int, with_lora: bool) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        host = self._fill([], {}, {}, size)          # all padding: the warm-up writes only the scratch block
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self._forward(size, with_lora, *host)    # compiles the kernels
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"):   # worker threads
            hidden = self._forward(size, with_lora, *host)
        self.pool = graph.pool()
        return graph, hidden
