"""The topic registry: every topic the pipeline uses, with its partition count and an optional prefix."""
from __future__ import annotations

from dataclasses import dataclass

DEFAULT_PARTITIONS = 4


@dataclass(frozen=True, slots=True)
class Topics:
    """Names of the public topics (`ticks`, `news`, `forecasts`, `deadletter`, `audit`) and the internal ones."""

    prefix: str = ""
    partitions: int = DEFAULT_PARTITIONS

    def __post_init__(self) -> None:
        if self.partitions < 1:
            raise ValueError("partitions must be >= 1")

    def _name(self, base: str) -> str:
        return f"{self.prefix}{base}"

    @property
    def ticks(self) -> str:
        return self._name("ticks")

    @property
    def news(self) -> str:
        return self._name("news")

    @property
    def forecasts(self) -> str:
        return self._name("forecasts")

    @property
    def deadletter(self) -> str:
        return self._name("deadletter")

    @property
    def symbol_news(self) -> str:
        """Internal: news fanned out to one record per named symbol, keyed by symbol."""
        return self._name("symbol-news")

    @property
    def requests(self) -> str:
        """Internal: inference requests from the agents, keyed by adapter (or symbol)."""
        return self._name("inference-requests")

    @property
    def requests_deep(self) -> str:
        """Internal: requests the base tier escalated to the deep tier (its own workers), keyed as `requests`."""
        return self._name("inference-requests-deep")

    def requests_of(self, tier: str) -> str:
        """The requests topic a tier's workers consume: "base" or "deep"."""
        return self.requests_deep if tier == "deep" else self.requests

    @property
    def audit(self) -> str:
        """The audit hash chain of every forecast's inputs; one partition, so the chain has one order."""
        return self._name("audit")

    def all(self) -> dict[str, int]:
        """Every topic with its partition count, for pre-creation (Tansu must not auto-create them)."""
        keyed = {t: self.partitions for t in (self.ticks, self.news, self.symbol_news, self.requests,
                                              self.requests_deep, self.forecasts)}
        return keyed | {self.deadletter: 1, self.audit: 1}
