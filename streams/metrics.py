"""Prometheus metrics: the base every process's metric group builds on, and the streams layer's own.

Each process builds the metric group of its role on its own registry (`ReplayMetrics` here,
`agents.metrics.AgentsMetrics`, `inference.metrics.InferenceMetrics`: each layer defines its own names)
and serves it with `run_observability`, which also writes the Redis heartbeat `finllm status` reads and
samples the lag of the process's consumer group. `exported_names(groups)` lists every sample name a
scrape of those groups can show (the dashboard test uses it).
"""
from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

log = logging.getLogger("finllm.metrics")

LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
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
        return {"events_sent_total": counter_total(self.events_sent), "lag_s": self.lag_s._value.get()}


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


def exported_names(groups: Iterable[type[ProcessMetrics]]) -> set[str]:
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


def counter_total(metric: Counter) -> float:
    """The sum of a counter over all its labels."""
    return sum(s.value for m in metric.collect() for s in m.samples if s.name.endswith("_total"))


def quantile(ordered: list[float], q: float) -> float | None:
    """The `q` quantile of already sorted values (None if there are none)."""
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)] if ordered else None
