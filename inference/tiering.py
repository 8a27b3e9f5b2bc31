"""Precision on demand: which tier answers a trigger, and what the language model's answer is worth.

Pure functions over probabilities and counts: no torch, no Kafka.

The value of asking the language model (`llm_value`, in [0, 1]) is what its answer can still change
in the fused forecast: the numeric forecast's uncertainty (its entropy over the three directions,
divided by log 3: 0 for a sure forecast, 1 for a uniform one) times the relevance of the news the
prompt carries. Without news the model sees only the market features the numeric forecast already
uses (the fusion gives it no weight there: inference.fusion); news already seen by the symbol's
previous forecast was priced in by it; each new item counts more:

    relevance = NO_NEWS                                    no news in the prompt
              = 1 - (1 - OLD_NEWS) * 0.5 ** new_news       otherwise (new_news unknown: counted as 1)

A trigger whose numeric forecast is confident (uncertainty at most `confident_uncertainty`) and that
carries no new news skips the language model: its forecast is the numeric one, status "skipped".
Every other trigger goes to the base tier, with the value as its scheduling priority (under load the
engine serves higher value first). After the base answer, `escalation_reasons` says why the deep tier
should answer again: "divergent" (the model's direction is not the numeric one, and they differ by more
than `divergence_tv` in total variation), "low_confidence" (the model's most probable direction has
less than `low_confidence` probability) or "review" (it calls against a large move since its news).
Only forecasts worth at least `min_escalation_value` escalate (a deep answer to a trigger without news
cannot change much).

The defaults suit the shipped base tier, SmolLM2's 8-layer student distilled from the deep tier
(`finllm adapters distill`): its top probability is 0.36-0.43 on held-out triggers (median 0.39), so the
0.40 bar flags its less sure half; and only fresh news on a numeric forecast near its most uncertain is
worth 0.7 (one fresh item on a uniform forecast is worth 0.75). On the benchmark tapes 12-18% of triggers
escalate (at the old 0.45 / 0.3, 80-92%: every answer of the student was "low confidence"), which keeps
the deep tier, ten times dearer a trigger, to what it can serve (bench/RESULTS.md, "Tiers").
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from typing import Literal

from inference.fusion import total_variation
from schemas import InferenceRequest, Probs
from schemas.units import NS_PER_MS

Route = Literal["skip", "base"]
QUANT_ENV = "FINLLM_ENGINE_QUANT"    # the engine's weight quantisation (e.g. int8), read by the engine
TIER_QUANT = {"base": ("FINLLM_BASE_QUANT", "auto"), "deep": ("FINLLM_DEEP_QUANT", "")}   # setting, default
LOG_3 = math.log(3.0)


@dataclass(frozen=True, slots=True)
class TierPolicy:
    confident_uncertainty: float = 0.8   # numeric entropy / log 3 at or below this is confident
    no_news: float = 0.1                 # relevance of a prompt without news
    old_news: float = 0.5                # relevance of news the previous forecast already saw
    divergence_tv: float = 0.35          # total variation beyond which differing directions diverge
    low_confidence: float = 0.40         # the model's top probability below this is low confidence
    min_escalation_value: float = 0.7    # forecasts worth less stay with the base answer
    deep_deadline_ms: int = 20_000       # a deep request's answer is due this long after the escalation

    def __post_init__(self) -> None:
        for name in ("confident_uncertainty", "no_news", "old_news", "min_escalation_value"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1]")

    @classmethod
    def from_env(cls) -> TierPolicy:
        """FINLLM_TIER_CONFIDENT (confident_uncertainty), FINLLM_TIER_LOW_CONFIDENCE,
        FINLLM_TIER_MIN_ESCALATION, FINLLM_DEEP_DEADLINE_MS, FINLLM_DIVERGENCE_TV (shared with the fusion's
        divergence flag)."""
        env, default = os.environ, cls()
        return cls(confident_uncertainty=float(env.get("FINLLM_TIER_CONFIDENT") or default.confident_uncertainty),
                   divergence_tv=float(env.get("FINLLM_DIVERGENCE_TV") or default.divergence_tv),
                   low_confidence=float(env.get("FINLLM_TIER_LOW_CONFIDENCE") or default.low_confidence),
                   min_escalation_value=float(env.get("FINLLM_TIER_MIN_ESCALATION")
                                              or default.min_escalation_value),
                   deep_deadline_ms=int(env.get("FINLLM_DEEP_DEADLINE_MS") or default.deep_deadline_ms))

    def relevance(self, has_news: bool, new_news: int | None) -> float:
        if not has_news:
            return self.no_news
        fresh = 1 if new_news is None else new_news
        return 1.0 - (1.0 - self.old_news) * 0.5 ** fresh

    def llm_value(self, numeric: Probs, has_news: bool, new_news: int | None) -> float:
        """What the language model's answer is worth to this forecast, in [0, 1]."""
        return uncertainty(numeric) * self.relevance(has_news, new_news)

    def route(self, numeric: Probs, new_news: int | None) -> Route:
        """"skip" when the numeric forecast is confident and no news came since the last forecast (known)."""
        confident = uncertainty(numeric) <= self.confident_uncertainty
        return "skip" if confident and new_news == 0 else "base"

    def escalation_reasons(self, numeric: Probs, llm: Probs | None, review: bool, value: float) -> tuple[str, ...]:
        """Why the deep tier should answer this forecast again (empty: it should not)."""
        if llm is None or value < self.min_escalation_value:
            return ()
        reasons = []
        if llm.direction != numeric.direction and total_variation(numeric, llm) > self.divergence_tv:
            reasons.append("divergent")
        if max(llm.as_tuple()) < self.low_confidence:
            reasons.append("low_confidence")
        if review:
            reasons.append("review")
        return tuple(reasons)

    def plan(self, requests: list[InferenceRequest]) -> tuple[list[InferenceRequest], set[str]]:
        """The base tier's requests with their value set, and the ids of those that skip the language model."""
        valued = [replace(r, value=self.llm_value(r.numeric, bool(r.news_ids), r.new_news)) for r in requests]
        return valued, {r.id for r in valued if self.route(r.numeric, r.new_news) == "skip"}

    def deep_request(self, request: InferenceRequest, llm: Probs, now_ns: int) -> InferenceRequest:
        """The escalated request for the deep tier: same id, its longer prompt, the base answer to fall back on."""
        return replace(request, tier="deep", base_llm=llm, created_wall_ns=now_ns,
                       deadline_wall_ns=now_ns + self.deep_deadline_ms * NS_PER_MS)


def uncertainty(probs: Probs) -> float:
    """Entropy over the directions divided by log 3: 0 for a sure forecast, 1 for a uniform one."""
    entropy = -sum(p * math.log(p) for p in probs.as_tuple() if p > 0)
    return min(max(entropy / LOG_3, 0.0), 1.0)


def value_first(requests: list[InferenceRequest], now_ns: int, cost_ns: int) -> tuple[list, list]:
    """(live, late) under a cost per request: requests are taken by value (higher first, then earlier
    deadline), each kept if every kept one still meets its deadline when they run earliest-deadline-first;
    under overload the least valuable are the ones left late."""
    live: list[InferenceRequest] = []
    late = []
    for request in sorted(requests, key=lambda r: (-(r.value or 0.0), r.deadline_wall_ns)):
        trial = sorted(live + [request], key=lambda r: r.deadline_wall_ns)
        fits = all(now_ns + cost_ns * (i + 1) <= r.deadline_wall_ns for i, r in enumerate(trial))
        (live if fits else late).append(request)
    return sorted(live, key=lambda r: r.deadline_wall_ns), late


def tier_env(tier: str, env: dict[str, str]) -> dict[str, str]:
    """The environment of one tier's inference workers: FINLLM_TIER, and the engine's quantisation from
    FINLLM_BASE_QUANT (default auto: int8 where the CPU lacks native bf16, the base tier being the fast one;
    inference.engine.cpu.default_quant) or FINLLM_DEEP_QUANT (default none:
    the deep tier runs the model at full precision), passed to the engine as FINLLM_ENGINE_QUANT."""
    setting, default = TIER_QUANT[tier]
    return dict(env, FINLLM_TIER=tier, **{QUANT_ENV: env.get(setting, default)})
