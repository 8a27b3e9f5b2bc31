"""A registered base model, converted and scored zero-shot: conversion time, folder size, label probabilities
on prompts of the sample tape, the label tokens' share of the next-token mass, engine vs transformers.

    python bench/model_zero_shot.py [--model smollm2-135m] [--prompts 3] [--fresh]

`--fresh` converts into a temporary cache (so the conversion is timed); otherwise the cache's copy is
used (converted first if need be). The prompts are the first fired triggers of the bundled sample tape,
built by the agents' own code (`agents.lab.examples.build_examples`). The last line printed is one JSON
object with every figure.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def sample_examples(count: int):
    from agents.config import AgentsConfig
    from agents.lab.examples import build_examples
    from streams.synth import sample_tape_path
    from streams.tape import Tape

    examples = build_examples(Tape.read(sample_tape_path()), AgentsConfig(), "direction")
    step = max(1, len(examples) // count)
    return examples[::step][:count]


def label_mass(model_dir: Path, prompts: list[str]) -> list[float]:
    """The share of the full next-token distribution that falls on the label tokens (transformers, float32)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from inference.scorers.prompting import PromptFormat

    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    prompt_format = PromptFormat.for_model(tokenizer, model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True, dtype=torch.float32).eval()
    shares = []
    with torch.inference_mode():
        for prompt in prompts:
            ids = prompt_format.encode(prompt)
            probs = model(input_ids=torch.tensor([ids])).logits[0, -1].softmax(-1)
            shares.append(round(float(probs[prompt_format.label_ids].sum()), 4))
    return shares


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--prompts", type=int, default=3)
    parser.add_argument("--dtype", default="float32", help="the engine's dtype for the zero-shot scores")
    parser.add_argument("--fresh", action="store_true", help="convert into a temporary cache, timed")
    args = parser.parse_args()
    if args.fresh:
        os.environ["FINLLM_CACHE_DIR"] = tempfile.mkdtemp(prefix="finllm-zero-shot-")

    import torch

    from inference.checkpoints import ensure_named_model, model_fingerprint
    from inference.scorers.base import ScoreItem
    from inference.scorers.factory import build_scorer
    from inference.scorers.parity import engine_vs_transformers

    started = time.perf_counter()
    model_dir = ensure_named_model(args.model)
    convert_s = time.perf_counter() - started
    size_mb = sum(f.stat().st_size for f in model_dir.iterdir() if f.is_file()) / 1e6
    print(f"model {args.model}: {model_dir} ({size_mb:.1f} MB), ready in {convert_s:.1f} s")

    examples = sample_examples(args.prompts)
    scorer = build_scorer("paged", model_dir, device="cpu", dtype=args.dtype)
    started = time.perf_counter()
    results = scorer.score([ScoreItem(str(i), e.request.prompt) for i, e in enumerate(examples)])
    score_s = time.perf_counter() - started
    scorer.close()
    print(f"engine ({args.dtype}, CPU, {torch.get_num_threads()} threads): {len(examples)} prompts scored "
          f"in {score_s:.2f} s, cold prefix cache")
    masses = label_mass(model_dir, [e.request.prompt for e in examples])
    rows = []
    for example, result, mass in zip(examples, results, masses):
        probs = [round(p, 4) for p in result.probs]
        rows.append({"symbol": example.request.symbol, "label": example.label, "probs_up_down_flat": probs,
                     "label_mass": mass})
        print(f"{example.request.symbol:<6} truth {example.label:<5} p(up, down, flat) {probs}  "
              f"label tokens' share of the next token {mass}")
    parity = engine_vs_transformers(model_dir)
    print(f"engine vs transformers (float32): max |diff| {parity.max_abs_diff:.3g} over {parity.compared_logits} logits")
    print(json.dumps({"model": args.model, "fingerprint": model_fingerprint(model_dir), "ready_s": round(convert_s, 1),
                      "fresh": args.fresh, "size_mb": round(size_mb, 1), "prompts": rows,
                      "score_s": round(score_s, 3), "dtype": args.dtype,
                      "engine_vs_transformers_max_abs_diff": parity.max_abs_diff}))


if __name__ == "__main__":
    main()
