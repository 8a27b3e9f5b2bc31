"""Batch-invariant mode's cost by tile size: score req/s of 8 x 350-token prompts, 1 thread, bf16, best of 3.

Runs the engine with the mode off, then on with (matrix-product tile rows / attention query tile rows) of
64/64, 256/64, 128/64 and 256/256, interleaved so a shared machine's load hits every variant alike.

    python bench/invariant_tiles.py [model folder]    # default: the SmolLM2-135M folder in the cache
"""
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
torch.set_num_threads(1)
import inference.kernels.invariant as inv  # noqa: E402
from inference.engine.config import EngineConfig  # noqa: E402
from inference.engine.engine import Engine  # noqa: E402
from inference.engine.sequence import RequestKind  # noqa: E402

M = sys.argv[1] if len(sys.argv) > 1 else str(Path.home() / ".cache/finllm/models/smollm2-135m-instruct-v1")
rng = random.Random(0)
prompts = [[rng.randrange(100, 49000) for _ in range(350)] for _ in range(8)]
engines = {on: Engine(M, EngineConfig(dtype="bfloat16", enable_prefix_caching=False, num_blocks=400,
                                      batch_invariant=on)) for on in (True, False)}
ids = iter(range(10 ** 9))


def run(engine: Engine) -> float:
    for p in prompts:
        engine.add_request(f"r{next(ids)}", p, RequestKind.SCORE, label_token_ids=(11, 12))
    start = time.perf_counter()
    engine.run_until_done()
    return time.perf_counter() - start


configs = [("off", None, None), ("64/64", 64, 64), ("256/64", 256, 64), ("128/64", 128, 64), ("256/256", 256, 256)]
best = {c[0]: 1e9 for c in configs}
for rep in range(3):
    for name, t, q in configs:
        if t:
            inv.TILE_ROWS, inv.QUERY_TILE = t, q
        best[name] = min(best[name], run(engines[t is not None]))
print({k: round(len(prompts) / v, 2) for k, v in best.items()}, "req/s, 1 thread, 8 x 350 tokens")
