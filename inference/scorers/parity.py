"""Does our engine compute what transformers computes on a checkpoint? One prompt, float32, both ways.

Compares the next-token logits at the prompt's end over the label tokens and an even spread of the
vocabulary (`finllm model verify` and the tests call it).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

PARITY_PROMPT = ("Forecast for ACME.\nNews:\n- [wire] ACME raises full-year guidance\n"
                 "Market: ret1 +1.2bp ret5 -3.4bp vol 5.6bp/min spread 2.0bp trades 57.\n"
                 "Direction over the next 60s (up, down or flat):")
PARITY_TOLERANCE = 1e-3   # float32, both sides: what a correct forward stays well inside


@dataclass(frozen=True, slots=True)
class Parity:
    max_abs_diff: float
    compared_logits: int
    prompt_tokens: int
    label_logits: tuple[float, ...]   # the engine's, at the label tokens


def engine_vs_transformers(model_dir: str | os.PathLike, prompt: str = PARITY_PROMPT,
                           spread: int = 256) -> Parity:
    """Max |engine - transformers| over the label logits and `spread` evenly spaced vocabulary logits."""
    import torch
    from transformers import AutoModelForCausalLM

    from inference.engine.config import EngineConfig
    from inference.scorers.engine import EngineScorer

    scorer = EngineScorer(str(model_dir), device="cpu",
                          config=EngineConfig(dtype="float32", num_blocks=64, enable_prefix_caching=False))
    try:
        token_ids = scorer.encode(prompt)
        vocab = len(scorer.tokenizer)
        probe = list(scorer.label_token_ids) + list(range(0, vocab, max(1, vocab // spread)))
        ours = torch.tensor(scorer.next_token_logits(prompt, probe), dtype=torch.float64)
    finally:
        scorer.close()
    model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True, dtype=torch.float32).eval()
    with torch.inference_mode():
        theirs = model(input_ids=torch.tensor([token_ids])).logits[0, -1, probe].double()
    labels = len(scorer.label_token_ids)
    return Parity(float((ours - theirs).abs().max()), len(probe), len(token_ids), tuple(ours[:labels].tolist()))
