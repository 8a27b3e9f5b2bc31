"""The inference worker's metrics (on the streams layer's consumer base), with the engine's own figures."""
from __future__ import annotations

from collections import deque
from typing import Any, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from inference.scorers.base import Scorer
from streams.metrics import LATENCY_BUCKETS_S, ConsumerMetrics, counter_total, quantile

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
RECENT_LATENCIES = 4096          # end-to-end latencies kept for the percentiles in the heartbeat


class InferenceMetrics(ConsumerMetrics):
    service = "inference"

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        super().__init__(registry)
        r = self.registry
        self.batch_size = Histogram("finllm_inference_batch_size", "Requests per consumed batch.",
                                    buckets=BATCH_BUCKETS, registry=r)
        self.latency_s = Histogram("finllm_inference_latency_seconds", "Model scoring time of one batch.",
                                   buckets=LATENCY_BUCKETS_S, registry=r)
        self.queue_s = Histogram("finllm_inference_queue_seconds",
                                 "Wall time from request creation to the worker picking it up.",
                                 buckets=LATENCY_BUCKETS_S, registry=r)
        self.tick_to_forecast_s = Histogram(
            "finllm_tick_to_forecast_seconds",
            "End to end: wall time from the trigger's tick arriving to its forecast being published.",
            buckets=LATENCY_BUCKETS_S, registry=r)
        self.forecasts = Counter("finllm_forecasts", "Forecasts published, by status (ok, expired, llm_error).",
                                 ["status"], registry=r)
        self.expired = Counter("finllm_inference_expired", "Requests past their deadline before scoring.",
                               registry=r)
        self.engine = EngineGauges(r)
        self.recent_e2e_s: deque[float] = deque(maxlen=RECENT_LATENCIES)

    def observe_forecasts(self, forecasts: Iterable[Any]) -> None:
        for forecast in forecasts:
            self.forecasts.labels(forecast.status).inc()
            if forecast.status == "expired":
                self.expired.inc()
            self.queue_s.observe(max(forecast.latency.queue_ms, 0.0) / 1e3)
            self.tick_to_forecast_s.observe(max(forecast.latency.total_ms, 0.0) / 1e3)
            self.recent_e2e_s.append(forecast.latency.total_ms / 1e3)

    def figures(self) -> dict[str, Any]:
        ordered = sorted(self.recent_e2e_s)
        out = {"forecasts_total": counter_total(self.forecasts), "expired_total": self.expired._value.get(),
               "deadletters_total": counter_total(self.deadletters)}
        for q in (0.5, 0.95, 0.99):
            out[f"e2e_s_p{round(q * 100)}"] = quantile(ordered, q)
        return out | self.engine.figures()


class EngineGauges:
    """The engine's own figures (`EngineScorer.metrics()`), exported after each batch."""

    COUNTERS = {"adapter_loads": "Adapters copied into a GPU slot.", "adapter_evictions": "Adapters evicted "
                "from their slot.", "preemptions": "Requests preempted for KV space.", "expired": "Requests the "
                "engine dropped past their deadline."}
    GAUGES = {"queue_depth": "Requests waiting in the engine scheduler.", "running": "Requests being run.",
              "kv_blocks_used": "KV cache blocks in use.", "kv_blocks_free": "KV cache blocks free.",
              "prefix_cache_hit_rate": "Prompt tokens served from the prefix cache, as a fraction."}
    QUANTILES = {"ttft_s": "Engine time to first token (score) in seconds, by quantile.",
                 "step_time_s": "Engine step time in seconds, by quantile."}

    def __init__(self, registry: CollectorRegistry) -> None:
        self.counters = {k: Counter(f"finllm_engine_{k}", h, registry=registry) for k, h in self.COUNTERS.items()}
        self.gauges = {k: Gauge(f"finllm_engine_{k}", h, registry=registry) for k, h in self.GAUGES.items()}
        self.quantiles = {k: Gauge(f"finllm_engine_{k.removesuffix('_s')}_seconds", h, ["quantile"],
                                   registry=registry) for k, h in self.QUANTILES.items()}
        self.adapters_registered = Gauge("finllm_adapters_registered", "LoRA adapters registered with the scorer.",
                                         registry=registry)
        self.adapters_resident = Gauge("finllm_adapters_resident", "LoRA adapters loaded in engine slots.",
                                       registry=registry)
        self.last: dict[str, Any] = {}

    def observe(self, scorer: Scorer) -> None:
        """Copy `scorer.metrics()` (empty for HFScorer) and the adapter counts into the gauges."""
        figures = dict(scorer.metrics())
        for key, counter in self.counters.items():
            if key in figures:
                counter.inc(max(figures[key] - self.last.get(key, 0), 0))
        for key, gauge in self.gauges.items():
            if key in figures:
                gauge.set(figures[key])
        for key, gauge in self.quantiles.items():
            for suffix, q in (("p50", "0.5"), ("p99", "0.99")):
                if f"{key}_{suffix}" in figures:
                    gauge.labels(q).set(figures[f"{key}_{suffix}"])
        self.last = figures | {"adapters_registered": sorted(scorer.adapter_names),
                               "adapters_resident": sorted(scorer.resident_adapters)}
        self.adapters_registered.set(len(self.last["adapters_registered"]))
        self.adapters_resident.set(len(self.last["adapters_resident"]))

    def figures(self) -> dict[str, Any]:
        keys = ("queue_depth", "kv_blocks_used", "kv_blocks_free", "adapter_loads", "adapter_evictions",
                "ttft_s_p50", "adapters_registered", "adapters_resident")
        return {k: self.last[k] for k in keys if k in self.last}
