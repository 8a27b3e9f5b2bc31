"""The CUDA-graph decode path's static buffers, run eagerly: padding, scratch block and per-token LoRA.

On a GPU `DecodeGraphs` captures and replays; the forward it captures is the one `capture=False` runs,
so these tests pin what the graph computes: every padded decode step gives the hidden states of the
engine's ordinary flat path, and whole generations give the ordinary engine's tokens.
"""
from __future__ import annotations

import random


from inference.engine.config import EngineConfig
from inference.engine.cuda_graphs import DecodeGraphs
from inference.engine.engine import Engine
from inference.engine.lora import LoraBatch
from inference.engine.sequence import RequestKind

SIZES = (1, 2, 4, 8)
PLAN = [(None, 3), ("a", 9), ("b", 16), ("c", 17), ("c", 30), (None, 5)]   # (adapter, prompt length)


def make_engine(checkpoint: dict, static_decode: bool, sizes: tuple[int, ...] = SIZES,
                device: str = "cpu") -> Engine:
    config = EngineConfig(block_size=4, num_blocks=96, max_num_batched_tokens=64, max_num_seqs=8,
                          max_adapter_slots=4, cuda_graph_sizes=sizes)
    engine = Engine(checkpoint["model_dir"], config, device)
    for name, path in checkpoint["adapters"].items():
        engine.register_adapter(name, path)
    if static_decode:
        engine.runner.decode_graphs = engine.runner.new_decode_graphs(capture=False)
    return engine


def checked_runs(engine: Engine) -> list[tuple[int, float]]:
    """Each static decode step also runs the flat path on the same chunks: (batch, max |difference|)."""
    graphs, runner, seen = engine.runner.decode_graphs, engine.runner, []
    run = graphs.run

    def run_and_compare(chunks, block_tables, slot_of):
        got = run(chunks, block_tables, slot_of).clone()
        input_ids, positions, attn = runner._prepare(chunks, block_tables)     # rewrites the same K/V
        lora = LoraBatch.for_step(runner.lora_weights, runner._segments(chunks, slot_of))
        expected = runner.model.forward(input_ids, positions, attn, runner.kv_cache, lora)
        seen.append((len(chunks), (got - expected).abs().max().item()))
        return got

    graphs.run = run_and_compare
    return seen


def generate(engine: Engine, plan, max_new_tokens: int) -> dict[str, tuple[int, ...]]:
    rng = random.Random(7)
    for i, (adapter, length) in enumerate(plan):
        engine.add_request(str(i), [rng.randrange(engine.model.config.vocab_size) for _ in range(length)], RequestKind.GENERATE,
                           adapter=adapter, max_new_tokens=max_new_tokens)
    return {o.request_id: o.output_token_ids for o in engine.run_until_done()}


def test_padded_static_decode_matches_flat_path_and_tokens(tiny_qwen2):
    static = make_engine(tiny_qwen2, static_decode=True)
    seen = checked_runs(static)
    tokens = generate(static, PLAN, max_new_tokens=7)
    assert tokens == generate(make_engine(tiny_qwen2, static_decode=False), PLAN, max_new_tokens=7)
    assert all(len(t) == 7 for t in tokens.values())
    batches = {n for n, _ in seen}
    assert 6 in batches and batches - set(SIZES), batches          # padded batches (6 -> 8) ran
    assert max(diff for _, diff in seen) <= 1e-5, seen


def test_padding_rows_write_only_the_scratch_block(tiny_qwen2):
    engine = make_engine(tiny_qwen2, static_decode=True, sizes=(4,))
    graphs: DecodeGraphs = engine.runner.decode_graphs
    cache = engine.runner.kv_cache
    assert graphs.scratch_block == engine.config.num_blocks == cache.shape[2] - 1
    engine.add_request("x", list(range(10, 19)), RequestKind.GENERATE, adapter="b", max_new_tokens=3)
    engine.add_request("y", list(range(40, 45)), RequestKind.GENERATE, max_new_tokens=3)
    engine.step()                                                       # both prefill (flat path)
    running = engine.scheduler.running
    assert len(running) == 2 and all(len(r.output_token_ids) == 1 for r in running)
    bm, bs = engine.scheduler.block_manager, engine.config.block_size
    expected = {bm.block_table(r.request_id)[(r.num_tokens - 1) // bs] for r in running}
    cache[:, :, graphs.scratch_block] = 0
    before = cache.clone()
    seen = checked_runs(engine)
    engine.step()                                                       # 2 decode rows padded to 4
    assert seen and seen[0][0] == 2 and seen[0][1] <= 1e-5
    touched = {int(b) for b in (cache != before).flatten(3).any(-1).any(0).any(0).nonzero()[:, 0]}
    assert touched == expected | {graphs.scratch_block}
