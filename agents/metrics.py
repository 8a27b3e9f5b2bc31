"""The agents worker's metrics (on the streams layer's consumer base)."""
from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from streams.metrics import LATENCY_BUCKETS_S, ConsumerMetrics, counter_total


class AgentsMetrics(ConsumerMetrics):
    service = "agents"

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        super().__init__(registry)
        r = self.registry
        self.events_in = Counter("finllm_agents_events_in", "Records consumed, by topic (without prefix).",
                                 ["topic"], registry=r)
        self.late_events = Counter("finllm_agents_late_events", "Events dead-lettered as too late, by topic.",
                                   ["topic"], registry=r)
        self.triggers = Counter("finllm_agents_triggers", "Forecast triggers fired, by trigger (cadence, news).",
                                ["trigger"], registry=r)
        self.held_triggers = Gauge("finllm_agents_held_triggers",
                                   "Tick-complete triggers held until the news stream passes them.", registry=r)
        self.symbols = Gauge("finllm_agents_symbols", "Symbols with state in this worker.", registry=r)
        self.trigger_wait_s = Histogram(
            "finllm_agents_trigger_wait_seconds",
            "Wall time from a trigger becoming tick-complete to its request being sent (buffer readiness).",
            buckets=LATENCY_BUCKETS_S, registry=r)

    def observe_buffers(self, held: int, symbols: int) -> None:
        self.held_triggers.set(held)
        self.symbols.set(symbols)

    def figures(self) -> dict[str, Any]:
        return {"events_in_total": counter_total(self.events_in), "triggers_total": counter_total(self.triggers),
                "deadletters_total": counter_total(self.deadletters), "held_triggers": self.held_triggers._value.get()}
