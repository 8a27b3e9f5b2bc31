"""Fusing the numeric and the language-model forecasts, and the checks on their disagreement.

log p_fused(d) = w_numeric * log p_numeric(d) + w_llm * log p_llm(d) + const, renormalised;
with w_llm = 0 the forecast is the numeric one, and equal weights multiply the two opinions.
Fitting the weights on a tape: `finllm eval --tape T --fit-weights` scores the tape's first
part too and picks, on that part only, the (w_numeric, w_llm) of a grid that minimise the fused
forecast's log-loss (`fit_weights`), then evaluates the last part with them; put the printed
weights in FINLLM_FUSION_W_NUMERIC / FINLLM_FUSION_W_LLM. A live run's `forecasts.parquet` holds
both components and can be fitted the same way.

Divergence: when the two disagree by more than `divergence_tv` in total variation, the forecast is
marked `divergent` and, if a deep adapter is configured, a second call scores the same prompt with it;
that deeper opinion is fused instead. Review: a language-model forecast whose direction contradicts a
large realised move since its latest news (`ret_since_news` of the request) is marked `review`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

from schemas import DIRECTIONS, Probs

FLOOR = 1e-6


@dataclass(frozen=True, slots=True)
class FusionWeights:
    """Defaults fitted with `finllm eval --fit-weights` on a synthetic tape the adapters were not trained
    on (bench/RESULTS.md, "Forecast quality"): the calibrated direction adapters carry the news, the
    numeric forecast (a Gaussian without jumps) is overdispersed, so it counts 0.3."""

    numeric: float = 0.3
    llm: float = 1.0

    def __post_init__(self) -> None:
        if self.numeric < 0 or self.llm < 0 or self.numeric + self.llm == 0:
            raise ValueError("fusion weights must be >= 0 and not both 0")

    @classmethod
    def from_env(cls) -> FusionWeights:
        default = cls()
        return cls(float(os.environ.get("FINLLM_FUSION_W_NUMERIC", default.numeric)),
                   float(os.environ.get("FINLLM_FUSION_W_LLM", default.llm)))


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
    return Probs.normalised(*fuse_arrays(np.asarray([numeric.as_tuple()]), np.asarray([llm.as_tuple()]),
                                         weights)[0].tolist())


def fuse_arrays(numeric: np.ndarray, llm: np.ndarray, weights: FusionWeights) -> np.ndarray:
    """`fuse` over [N, L] arrays of probabilities: the fused probabilities [N, L]."""
    logits = weights.numeric * np.log(np.maximum(numeric, FLOOR)) + weights.llm * np.log(np.maximum(llm, FLOOR))
    odds = np.exp(logits - logits.max(axis=1, keepdims=True))
    return odds / odds.sum(axis=1, keepdims=True)


def mean_logloss(probs: np.ndarray, y: np.ndarray) -> float:
    return float(-np.log(np.maximum(probs[np.arange(y.size), y], FLOOR)).mean())


WEIGHT_GRID = tuple(round(0.1 * step, 1) for step in range(21))   # 0.0, 0.1, ..., 2.0


def fit_weights(numeric: np.ndarray, llm: np.ndarray, y: np.ndarray,
                grid: tuple[float, ...] = WEIGHT_GRID) -> tuple[FusionWeights, float]:
    """The weights on `grid` x `grid` whose fused forecast has the least log-loss on (numeric [N, L],
    llm [N, L], realised label index [N]), and that log-loss; ties go to the smaller LLM weight."""
    if y.size == 0:
        raise ValueError("no rows to fit the fusion weights on")
    best: tuple[float, float, float] | None = None
    for w_llm in grid:
        for w_numeric in grid:
            if w_numeric + w_llm == 0:
                continue
            loss = mean_logloss(fuse_arrays(numeric, llm, FusionWeights(w_numeric, w_llm)), y)
            if best is None or loss < best[0] - 1e-12:
                best = (loss, w_numeric, w_llm)
    assert best is not None
    return FusionWeights(best[1], best[2]), best[0]


def fused_logloss(rows: Iterable[tuple[Probs, Probs | None, str]], weights: FusionWeights) -> float:
    """Mean log-loss of the fused forecast over (numeric, llm, realised direction) rows."""
    rows = list(rows)
    if not rows:
        return float("nan")
    fused = np.asarray([fuse(n, m, weights).as_tuple() for n, m, _ in rows])
    return mean_logloss(fused, np.asarray([DIRECTIONS.index(d) for _, _, d in rows]))
