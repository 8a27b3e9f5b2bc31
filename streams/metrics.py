"""Prometheus metrics of every pipeline process, each name defined once here.

Each process builds the metric group of its role (`ReplayMetrics`, `AgentsMetrics`,
`InferenceMetrics`) on its own registry and serves it with `run_observability`, which also
writes the Redis heartbeat `finllm status` reads and samples the lag of the process's consumer
group. `exported_names()` lists every sample name a scrape can show (the dashboard test uses it).
"""
from __future__ import annotations

import asyncio
import logging
import os
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

log = logging.getLogger("finllm.metrics")

LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
RECENT_LATENCIES = 4096          # end-to-end latencies kept for the percentiles in the heartbeat
OBSERVE_INTERVAL_S = 5.0         # heartbeat and lag sampling period


class ProcessMetrics:
    """Base of the metric groups: one registry per process."""

    service = "process"

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()

    def figures(self) -> dict[str, Any]:
        """Key figures for the heartbeat (counters named `*_total` also get a `*_per_s` rate there)."""
        return {}


class ReplayMetrics(ProcessMetrics):
    service = "replay"

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        super().__init__(registry)
        self.events_sent = Counter("finllm_replay_events_sent", "Tape events published, by kind (tick, news).",
                                   ["kind"], registry=self.registry)
        self.lag_s = Gauge("finllm_replay_lag_seconds",
                           "How far publishing is behind the paced schedule (0 when unpaced).", registry=self.registry)

    def figures(self) -> dict[str, Any]:
        return {"events_sent_total": _total(self.events_sent), "lag_s": self.lag_s._value.get()}


class ConsumerMetrics(ProcessMetrics):
    """What every consuming worker exports: its group's lag and its dead letters."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        super().__init__(registry)
        self.lag_messages = Gauge(
            "finllm_consumer_lag_messages",
            "Records not yet committed by the group, per topic partition: the high watermark from fetch "
            "responses minus the committed offset. Not from ListOffsets (end_offsets), which Tansu's "
            "memory engine answers wrongly; where offsets look wrong, rely on finllm_consumer_lag_seconds.",
            ["group", "topic", "partition"], registry=self.registry)
        self.lag_s = Gauge(
            "finllm_consumer_lag_seconds",
            "Event time between the newest record of a partition and the oldest the group has not committed "
            "(ts_ns of the records themselves, so it holds on brokers with wrong offsets).",
            ["group", "topic", "partition"], registry=self.registry)
        self.deadletters = Counter("finllm_deadletters", "Records sent to the dead-letter topic, by stage and reason.",
                                   ["stage", "reason"], registry=self.registry)
        self.redis_errors = Counter("finllm_redis_errors", "Redis calls that failed while the worker ran on without "
                                    "them, by use (latest, checkpoint).", ["use"], registry=self.registry)

    def observe_lag(self, lags: Iterable[Any]) -> None:
        for lag in lags:
            labels = (lag.group, lag.topic, str(lag.partition))
            self.lag_messages.labels(*labels).set(lag.messages)
            if lag.event_s is not None:
                self.lag_s.labels(*labels).set(lag.event_s)


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
        return {"events_in_total": _total(self.events_in), "triggers_total": _total(self.triggers),
                "deadletters_total": _total(self.deadletters), "held_triggers": self.held_triggers._value.get()}


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
        out = {"forecasts_total": _total(self.forecasts), "expired_total": self.expired._value.get(),
               "deadletters_total": _total(self.deadletters)}
        for q in (0.5, 0.95, 0.99):
            out[f"e2e_s_p{round(q * 100)}"] = _quantile(ordered, q)
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

    def observe(self, scorer: Any) -> None:
        """Copy `scorer.metrics()` (absent on HFScorer) and the adapter counts into the gauges."""
        metrics_fn = getattr(scorer, "metrics", None)
        figures = dict(metrics_fn()) if callable(metrics_fn) else {}
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
        self.last = figures | adapter_names(scorer)
        self.adapters_registered.set(len(self.last["adapters_registered"]))
        self.adapters_resident.set(len(self.last["adapters_resident"]))

    def figures(self) -> dict[str, Any]:
        keys = ("queue_depth", "kv_blocks_used", "kv_blocks_free", "adapter_loads", "adapter_evictions",
                "ttft_s_p50", "adapters_registered", "adapters_resident")
        return {k: self.last[k] for k in keys if k in self.last}


def adapter_names(scorer: Any) -> dict[str, list[str]]:
    """Registered and slot-resident adapter names of an HFScorer or EngineScorer (empty if unknown)."""
    engine = getattr(scorer, "engine", None)
    registered = getattr(scorer, "adapter_names", None)
    if registered is None and engine is not None:
        registered = engine.registry.names
    resident = engine.slots.resident if engine is not None else registered
    return {"adapters_registered": sorted(registered or ()), "adapters_resident": sorted(resident or ())}


METRIC_GROUPS = (ReplayMetrics, AgentsMetrics, InferenceMetrics)


def exported_names(groups: Iterable[type[ProcessMetrics]] = METRIC_GROUPS) -> set[str]:
    """Every sample name a scrape of these groups can show (counters as `_total`, histograms as
    `_bucket`/`_sum`/`_count`), labelled or not, observed or not."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    names: set[str] = set()
    for group in groups:
        for family in group().registry.collect():
            names |= {family.name + suffix for suffix in suffixes[family.type]}
    return names


@dataclass(frozen=True, slots=True)
class MetricsEndpoint:
    host: str
    port: int
    server: Any

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def serve_metrics(metrics: ProcessMetrics, env: Mapping[str, str] | None = None) -> MetricsEndpoint:
    """Serve /metrics on FINLLM_METRICS_HOST (127.0.0.1) : FINLLM_METRICS_PORT (0 or unset: a free port)."""
    env = os.environ if env is None else env
    host = env.get("FINLLM_METRICS_HOST") or "127.0.0.1"
    server, _ = start_http_server(int(env.get("FINLLM_METRICS_PORT") or 0), addr=host, registry=metrics.registry)
    endpoint = MetricsEndpoint(host, server.server_port, server)
    log.info("%s metrics on http://%s:%d/metrics", metrics.service, host, endpoint.port)
    return endpoint


async def run_observability(metrics: ProcessMetrics, kafka: Any = None, lag: Mapping[str, list[str]] | None = None,
                            extra: Callable[[], Mapping[str, Any]] | None = None,
                            env: Mapping[str, str] | None = None) -> None:
    """Until cancelled: serve the metrics, beat the Redis heartbeat (if FINLLM_REDIS_URL is set), and
    sample the lag of the consumer groups in `lag` (group -> topics) every OBSERVE_INTERVAL_S."""
    from streams.heartbeat import Heartbeat
    from streams.lag import LagProbe

    env = os.environ if env is None else env
    endpoint = serve_metrics(metrics, env)
    redis_url, prefix = env.get("FINLLM_REDIS_URL"), kafka.topics.prefix if kafka else ""
    beat = Heartbeat.connect(redis_url, metrics.service, endpoint.port, prefix) if redis_url else None
    probe = LagProbe(kafka) if kafka and lag else None
    try:
        while True:
            if probe:
                await _sample_lag(probe, metrics, lag)
            if beat:
                await beat.beat(metrics.figures() | {"groups": dict(lag or {})} | dict(extra() if extra else {}))
            await asyncio.sleep(float(env.get("FINLLM_OBSERVE_INTERVAL_S") or OBSERVE_INTERVAL_S))
    finally:  # shielded: a second cancel (at loop shutdown) must not leave consumers open
        await asyncio.shield(_close(endpoint, probe, beat))


async def _close(endpoint: MetricsEndpoint, *closing: Any) -> None:
    await asyncio.to_thread(endpoint.close)
    for resource in closing:
        if resource:
            await resource.close()


async def _sample_lag(probe: Any, metrics: Any, lag: Mapping[str, list[str]]) -> None:
    for group, topics in lag.items():
        try:
            metrics.observe_lag(await probe.lag(group, topics))
        except Exception as error:  # the broker may be away for a moment; lag is best effort
            log.warning("lag of %s not sampled: %s", group, error)


def _total(metric: Counter) -> float:
    return sum(s.value for m in metric.collect() for s in m.samples if s.name.endswith("_total"))


def _quantile(ordered: list[float], q: float) -> float | None:
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)] if ordered else None
