"""Fusing the numeric and the language-model forecasts: a weighted product of experts.

log p_fused(d) = w_numeric * log p_numeric(d) + w_llm * log p_llm(d) + const, renormalised;
with w_llm = 0 the forecast is the numeric one, and equal weights multiply the two opinions.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

from schemas import Probs

FLOOR = 1e-6


@dataclass(frozen=True, slots=True)
class FusionWeights:
    numeric: float = 1.0
    llm: float = 1.0

    def __post_init__(self) -> None:
        if self.numeric < 0 or self.llm < 0 or self.numeric + self.llm == 0:
            raise ValueError("fusion weights must be >= 0 and not both 0")

    @classmethod
    def from_env(cls) -> FusionWeights:
        return cls(float(os.environ.get("FINLLM_FUSION_W_NUMERIC", 1.0)),
                   float(os.environ.get("FINLLM_FUSION_W_LLM", 1.0)))


def fuse(numeric: Probs, llm: Probs | None, weights: FusionWeights) -> Probs:
    if llm is None:
        return numeric
    logits = [weights.numeric * math.log(max(n, FLOOR)) + weights.llm * math.log(max(m, FLOOR))
              for n, m in zip(numeric.as_tuple(), llm.as_tuple())]
    top = max(logits)
    return Probs.normalised(*(math.exp(x - top) for x in logits))
