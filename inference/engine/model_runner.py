"""Turns a `SchedulerOutput` into one flat forward pass and reads the outputs back."""
from __future__ import annotations

import torch

from inference.engine.config import EngineConfig
from inference.engine.cuda_graphs import DecodeGraphs
from inference.engine.lora import LoraBatch, LoraSlotWeights
from inference.engine.model import AttentionMetadata, Transformer
from inference.engine.sampling import sample_next_tokens
from inference.engine.scheduler import ScheduledChunk, SchedulerOutput, StepResult
from inference.engine.sequence import RequestKind
from inference.kernels import step_lens, use_triton
from inference.kernels.reference import LoraSegment


class ModelRunner:
    """Owns the KV cache and the LoRA slot stacks; stateless between steps otherwise.

    The cache holds one block more than the pool hands out: the scratch block where padded rows of a
    CUDA-graph decode write their K/V.

    Batch-invariant mode (`EngineConfig.batch_invariant`, the torch path only) applies to the steps that
    prefill: their matrix products run on fixed row tiles and their prefilling requests' attention on fixed
    shapes. A step of decodes only runs as before (a decode padded to a row tile costs too much, and no
    score request decodes), as do decodes' attention inside a mixed step.
    """

    def __init__(self, model: Transformer, config: EngineConfig) -> None:
        self.model = model
        self.config = config
        self.device = model.embed.device
        self.kv_cache = model.new_kv_cache(config.num_blocks + 1, config.block_size)
        self.lora_weights = LoraSlotWeights(
            model.config.num_layers, config.max_adapter_slots, config.max_lora_rank,
            model.config.lora_dims(), model.embed.dtype, self.device)
        self.decode_graphs = self.new_decode_graphs(capture=True) if self._graphs_apply() else None
        torch_path = not use_triton(model.embed)
        if config.batch_invariant and not torch_path:
            raise ValueError("EngineConfig.batch_invariant is a mode of the torch (CPU) path, not of the Triton kernels")
        self.batch_invariant = torch_path if config.batch_invariant is None else config.batch_invariant

    def _graphs_apply(self) -> bool:
        return bool(self.config.cuda_graph_sizes) and self.device.type == "cuda" and use_triton(self.model.embed)

    def new_decode_graphs(self, capture: bool) -> DecodeGraphs:
        """Static-buffer decode for batches up to the largest configured size (capture=False: run eagerly)."""
        sizes = tuple(n for n in self.config.cuda_graph_sizes if n <= self.config.max_num_seqs) or (1,)
        limit = min(self.config.max_cached_tokens, self.model.config.max_position_embeddings)
        return DecodeGraphs(self.model, self.kv_cache, self.lora_weights, sizes, self.config.block_size,
                            -(-limit // self.config.block_size), self.config.num_blocks, capture)

    def execute(self, out: SchedulerOutput, block_tables: dict[str, list[int]],
                slot_of: dict[str, int]) -> dict[str, StepResult]:
        """Run every scheduled chunk; return outputs for chunks that complete their sequence."""
        chunks = sorted(out.chunks, key=lambda c: _slot_key(c, slot_of))   # group tokens by adapter
        if self.decode_graphs is not None and self.decode_graphs.fits(chunks, block_tables):
            hidden = self.decode_graphs.run(chunks, block_tables, slot_of)  # [B, H], row b is chunks[b]
            return self._read_outputs(hidden, [(c, b) for b, c in enumerate(chunks) if c.completes_sequence])
        input_ids, positions, attn = self._prepare(chunks, block_tables)
        lora = LoraBatch.for_step(self.lora_weights, self._segments(chunks, slot_of), attn.invariant is not None)
        hidden = self.model.forward(input_ids, positions, attn, self.kv_cache, lora)   # [T, H]
        sampled = [(c, attn.query_start_loc[b + 1] - 1) for b, c in enumerate(chunks) if c.completes_sequence]
        return self._read_outputs(hidden, sampled, attn.invariant is not None)

    def _prepare(self, chunks: list[ScheduledChunk], block_tables: dict[str, list[int]]):
        """Flat inputs of the step; token positions and cache slots are computed as tensors, not per token."""
        bs = self.config.block_size
        input_ids, seq_lens, starts = [], [], [0]
        tables = [block_tables[c.request.request_id] for c in chunks]
        for chunk in chunks:
            stop = chunk.start + chunk.num_new_tokens
            input_ids.extend(chunk.request.token_ids[chunk.start:stop])
            seq_lens.append(stop)
            starts.append(starts[-1] + chunk.num_new_tokens)
        width = max(len(t) for t in tables)
        padded = torch.tensor([t + [0] * (width - len(t)) for t in tables], dtype=torch.long)    # [B, W]
        counts = torch.tensor([c.num_new_tokens for c in chunks])
        row = torch.repeat_interleave(torch.arange(len(chunks)), counts)                         # [T]
        offset = torch.tensor([c.start for c in chunks]) - torch.tensor(starts[:-1])             # [B]
        positions = torch.arange(starts[-1]) + offset[row]                                       # [T]
        slots = padded[row, positions // bs] * bs + positions % bs
        to_device = lambda t: t.to(self.device, non_blocking=True)  # noqa: E731
        prefilling = [c.start < len(c.request.prompt_token_ids) for c in chunks]
        attn = AttentionMetadata(to_device(slots), to_device(padded), seq_lens, starts,
                                 step_lens(seq_lens, starts, self.model.embed),
                                 prefilling if self.batch_invariant and any(prefilling) else None)
        return to_device(torch.tensor(input_ids, dtype=torch.long)), to_device(positions), attn

    def _segments(self, chunks: list[ScheduledChunk], slot_of: dict[str, int]) -> list[LoraSegment]:
        segments: list[LoraSegment] = []
        start = 0
        for chunk in chunks:
            end = start + chunk.num_new_tokens
            adapter = chunk.request.adapter
            if adapter is not None:
                slot = slot_of[adapter]
                if segments and segments[-1].slot == slot and segments[-1].end == start:
                    segments[-1] = LoraSegment(segments[-1].start, end, slot, segments[-1].rank, segments[-1].scale)
                else:
                    w = self.lora_weights
                    segments.append(LoraSegment(start, end, slot, w.ranks[slot], w.scales[slot]))
            start = end
        return segments

    def _read_outputs(self, hidden: torch.Tensor, sampled: list[tuple[ScheduledChunk, int]],
                      invariant: bool = False) -> dict[str, StepResult]:
        results: dict[str, StepResult] = {}
        scores = [(c.request, row) for c, row in sampled if c.request.kind is RequestKind.SCORE]
        gens = [(c.request, row) for c, row in sampled if c.request.kind is RequestKind.GENERATE]
        for num_labels in {len(r.label_token_ids) for r, _ in scores}:
            group = [(r, row) for r, row in scores if len(r.label_token_ids) == num_labels]
            rows = torch.tensor([row for _, row in group], device=self.device)
            labels = torch.tensor([r.label_token_ids for r, _ in group], device=self.device)
            logits = self.model.label_logits(hidden[rows], labels, invariant).float().cpu().tolist()   # [N, K]
            for (request, _), values in zip(group, logits):
                results[request.request_id] = StepResult(request.request_id, label_logits=tuple(values))
        if gens:
            rows = torch.tensor([row for _, row in gens], device=self.device)
            picks = sample_next_tokens(self.model.logits(hidden[rows]), [r for r, _ in gens])   # [N]
            for (request, _), (token, logprobs) in zip(gens, picks):
                results[request.request_id] = StepResult(request.request_id, next_token_id=token, logprobs=logprobs)
        return results


def _slot_key(chunk: ScheduledChunk, slot_of: dict[str, int]) -> tuple[int, int]:
    adapter = chunk.request.adapter
    return (0, 0) if adapter is None else (1, slot_of[adapter])
