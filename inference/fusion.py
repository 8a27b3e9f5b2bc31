"""Fusing the numeric and the language-model forecasts, and the checks on their disagreement.

log p_fused(d) = w_numeric * log p_numeric(d) + w_llm * log p_llm(d) + const, renormalised;
with w_llm = 0 the forecast is the numeric one, and equal weights multiply the two opinions.
Fitting the weights on a tape: replay it (`finllm demo --tape T`), read `forecasts.parquet` (it
holds both components and the realised direction) and choose (w_numeric, w_llm) minimising the
log-loss of the fused probabilities, e.g. over a grid; `fused_logloss` below is that objective.

Divergence: when the two disagree by more than `divergence_tv` in total variation, the forecast is
marked `divergent` and, if a deep adapter is configured, a second call scores the same prompt with it;
that deeper opinion is fused instead. Review: a language-model forecast whose direction contradicts a
large realised move since its latest news (`ret_since_news` of the request) is marked `review`.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Iterable

from schemas import Probs

FLOOR = 1e-6


@dataclass(frozen=True, slots=True)
class FusionWeights:
    """Defaults fitted on a synthetic tape (bench/RESULTS.md, "Forecast quality"): the shipped adapters
    are overconfident, so the language model's opinion counts half."""

    numeric: float = 1.0
    llm: float = 0.5

    def __post_init__(self) -> None:
        if self.numeric < 0 or self.llm < 0 or self.numeric + self.llm == 0:
            raise ValueError("fusion weights must be >= 0 and not both 0")

    @classmethod
    def from_env(cls) -> FusionWeights:
        return cls(float(os.environ.get("FINLLM_FUSION_W_NUMERIC", 1.0)),
                   float(os.environ.get("FINLLM_FUSION_W_LLM", 0.5)))


@dataclass(frozen=True, slots=True)
class FusionPolicy:
    weights: FusionWeights = field(default_factory=FusionWeights)
    divergence_tv: float = 0.35        # total variation above which the two forecasts diverge
    deep_adapter: str | None = None    # scores divergent prompts a second time; None: no deep path
    review_move_bps: float = 30.0      # a move since the news this large makes a contrary LLM suspect

    @classmethod
    def from_env(cls) -> FusionPolicy:
        env = os.environ
        return cls(FusionWeights.from_env(), float(env.get("FINLLM_DIVERGENCE_TV", 0.35)),
                   env.get("FINLLM_DEEP_ADAPTER") or None, float(env.get("FINLLM_REVIEW_MOVE_BPS", 30.0)))

    def diverges(self, numeric: Probs, llm: Probs | None) -> bool:
        return llm is not None and total_variation(numeric, llm) > self.divergence_tv

    def needs_review(self, llm: Probs | None, ret_since_news: float | None) -> bool:
        """The LLM calls against a large move that already followed its news."""
        if llm is None or ret_since_news is None or abs(ret_since_news) * 1e4 < self.review_move_bps:
            return False
        return llm.direction == ("down" if ret_since_news > 0 else "up")


def total_variation(a: Probs, b: Probs) -> float:
    return 0.5 * sum(abs(x - y) for x, y in zip(a.as_tuple(), b.as_tuple()))


def fuse(numeric: Probs, llm: Probs | None, weights: FusionWeights) -> Probs:
    if llm is None:
        return numeric
    logits = [weights.numeric * math.log(max(n, FLOOR)) + weights.llm * math.log(max(m, FLOOR))
              for n, m in zip(numeric.as_tuple(), llm.as_tuple())]
    top = max(logits)
    return Probs.normalised(*(math.exp(x - top) for x in logits))


def fused_logloss(rows: Iterable[tuple[Probs, Probs | None, str]], weights: FusionWeights) -> float:
    """Mean log-loss of the fused forecast over (numeric, llm, realised direction) rows."""
    losses = [-math.log(max(getattr(fuse(n, m, weights), f"p_{d}"), FLOOR)) for n, m, d in rows]
    return sum(losses) / len(losses) if losses else float("nan")
