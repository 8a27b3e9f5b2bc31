"""What a trigger's prefill costs in the engine after its warm-up cached the head: one score request of
`head + new` tokens whose head is cached, timed alone, for several `new`, in float32 with the batch-invariant
mode on and off and in int8 (the base tier's default on CPUs without native bf16): what predictive buffering
can save on this processor.

    python bench/trigger_prefill.py [--model NAME] [--threads 1] [--repeats 5]

Prints one line per case (median and best of the repeats); the last line is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from inference.checkpoints import DEFAULT_MODEL, resolve_model_dir  # noqa: E402
from inference.engine.config import EngineConfig  # noqa: E402
from inference.engine.cpu import describe_processor  # noqa: E402
from inference.engine.engine import Engine  # noqa: E402
from inference.engine.sequence import RequestKind  # noqa: E402

# (label, cached head tokens, tokens left at the trigger): SmolLM2's chat prompts of the bench tape (median 237)
CASES = (("unbuffered", 0, 237), ("head in full blocks", 158, 79), ("whole head", 169, 68),
         ("market line last", 188, 49), ("a few tokens", 229, 8))

MODES = {"invariant": {"batch_invariant": True}, "variant": {"batch_invariant": False}, "int8": {"quant": "int8"}}


def time_trigger(engine: Engine, rng: random.Random, cached: int, new: int) -> float:
    """Milliseconds to score `cached + new` tokens once the first `cached` are in the prefix cache."""
    head = [rng.randrange(100, 40_000) for _ in range(cached)]
    if head:
        engine.add_request(f"warm-{rng.random()}", head, RequestKind.SCORE, label_token_ids=(1, 2, 3))
        engine.run_until_done()
    tokens = head + [rng.randrange(100, 40_000) for _ in range(new)]
    engine.add_request(f"trigger-{rng.random()}", tokens, RequestKind.SCORE, label_token_ids=(1, 2, 3))
    started = time.perf_counter()
    engine.run_until_done()
    return (time.perf_counter() - started) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model_dir, rng, figures = str(resolve_model_dir(args.model)), random.Random(0), {}
    for mode, settings in MODES.items():
        engine = Engine(model_dir, EngineConfig(dtype="float32", cuda_graph_sizes=(), **settings))
        time_trigger(engine, rng, 100, 10)                      # untimed: warms the engine up
        for label, cached, new in CASES:
            times = [time_trigger(engine, rng, cached, new) for _ in range(args.repeats)]
            key = f"{mode}_{new}_new_ms"
            figures[key] = round(statistics.median(times), 1)
            print(f"{mode:<9} {label:<20} {new:>3} new tokens: median {figures[key]} ms, best {min(times):.1f} ms",
                  flush=True)
    print(json.dumps(figures | {"model": args.model, "processor": describe_processor()}))


if __name__ == "__main__":
    main()
