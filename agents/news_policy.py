"""Settings of the news screen (sources, credibility, deduplication, text caps); read once from env."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

DEFAULT_DEDUP_TTL_S = 3_600


@dataclass(frozen=True, slots=True)
class NewsPolicy:
    blocked_sources: frozenset[str] = frozenset()              # dropped to `deadletter` (blocked_source)
    credibility_weights: dict[str, float] = field(default_factory=dict)   # source -> weight in [0, 1]
    unknown_weight: float = 0.5                                # weight of a source not listed
    dedup_ttl_s: int = DEFAULT_DEDUP_TTL_S                     # the same headline within this is a duplicate
    max_headline_chars: int = 200
    max_body_chars: int = 2_000

    def __post_init__(self) -> None:
        weights = list(self.credibility_weights.values()) + [self.unknown_weight]
        if not all(0.0 <= w <= 1.0 for w in weights):
            raise ValueError("credibility weights must be in [0, 1]")
        if min(self.dedup_ttl_s, self.max_headline_chars, self.max_body_chars) <= 0:
            raise ValueError("dedup_ttl_s, max_headline_chars and max_body_chars must be > 0")

    def blocked(self, source: str) -> bool:
        return source in self.blocked_sources

    def credibility(self, source: str) -> float:
        """How much a source's news counts: its configured weight, else `unknown_weight`; 0 if blocked."""
        if self.blocked(source):
            return 0.0
        return self.credibility_weights.get(source, self.unknown_weight)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> NewsPolicy:
        """FINLLM_NEWS_BLOCKED_SOURCES=a,b  FINLLM_NEWS_CREDIBILITY=src:0.9,...  FINLLM_NEWS_UNKNOWN_WEIGHT=0.5
        FINLLM_NEWS_DEDUP_TTL_S=3600  FINLLM_NEWS_MAX_HEADLINE_CHARS=200  FINLLM_NEWS_MAX_BODY_CHARS=2000"""
        env = os.environ if env is None else env
        kw: dict = {}
        if env.get("FINLLM_NEWS_BLOCKED_SOURCES"):
            kw["blocked_sources"] = frozenset(_items(env["FINLLM_NEWS_BLOCKED_SOURCES"]))
        if env.get("FINLLM_NEWS_CREDIBILITY"):
            pairs = (item.rsplit(":", 1) for item in _items(env["FINLLM_NEWS_CREDIBILITY"]))
            kw["credibility_weights"] = {source.strip(): float(weight) for source, weight in pairs}
        for var, name, cast in (("FINLLM_NEWS_UNKNOWN_WEIGHT", "unknown_weight", float),
                                ("FINLLM_NEWS_DEDUP_TTL_S", "dedup_ttl_s", int),
                                ("FINLLM_NEWS_MAX_HEADLINE_CHARS", "max_headline_chars", int),
                                ("FINLLM_NEWS_MAX_BODY_CHARS", "max_body_chars", int)):
            if env.get(var):
                kw[name] = cast(env[var])
        return cls(**kw)


def _items(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]
