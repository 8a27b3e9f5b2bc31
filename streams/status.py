"""What `finllm status` shows: one screen on a running stack (the command is in agents/cli/stack.py).

Services up (Kafka, Redis, and every worker whose Redis heartbeat is live), topics with each
consumer group's lag, throughput and latency percentiles from the workers' heartbeats, and the
adapters the inference workers hold. Exits 1 only when Kafka or Redis cannot be reached.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from streams.heartbeat import HealthRecord, read_health
from streams.lag import LagProbe, PartitionLag
from streams.settings import KafkaSettings
from streams.topics import Topics

PROBE_TIMEOUT_S = 15.0
DEFAULT_AGENTS_GROUP = "finllm-agents"
DEFAULT_INFERENCE_GROUP = "finllm-inference"


@dataclass(frozen=True, slots=True)
class StatusView:
    kafka: str
    redis: str
    kafka_error: str | None = None
    redis_error: str | None = None
    topics: dict[str, int] = field(default_factory=dict)
    health: list[HealthRecord] = field(default_factory=list)
    lags: list[PartitionLag] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.kafka_error is None and self.redis_error is None


def default_groups(topics: Topics) -> dict[str, list[str]]:
    return {DEFAULT_AGENTS_GROUP: [topics.ticks, topics.symbol_news, topics.news],
            DEFAULT_INFERENCE_GROUP: [topics.requests]}


def groups_to_probe(topics: Topics, health: list[HealthRecord]) -> dict[str, list[str]]:
    """The groups the live workers announce in their heartbeats, else the default ones."""
    announced = {g: list(t) for r in health for g, t in (r.figures.get("groups") or {}).items()}
    return announced or default_groups(topics)


async def gather_status(kafka: KafkaSettings, redis_url: str) -> StatusView:
    health, redis_error = await _read_redis(redis_url, kafka.topics.prefix)
    probe = LagProbe(kafka)
    try:
        async with asyncio.timeout(PROBE_TIMEOUT_S):
            partitions = await probe.partitions()
            wanted = set(kafka.topics.all())
            lags = [lag for group, topics in groups_to_probe(kafka.topics, health).items()
                    for lag in await probe.lag(group, topics)]
        return StatusView(kafka.bootstrap, redis_url, None, redis_error,
                          {t: n for t, n in partitions.items() if t in wanted}, health, lags)
    except Exception as error:  # unreachable broker: report it, do not crash
        return StatusView(kafka.bootstrap, redis_url, _describe(error), redis_error, health=health)
    finally:
        await probe.close()


async def _read_redis(url: str, prefix: str) -> tuple[list[HealthRecord], str | None]:
    client = aioredis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
    try:
        await client.ping()
        return await read_health(client, prefix), None
    except (aioredis.RedisError, OSError) as error:
        return [], _describe(error)
    finally:
        await client.aclose()


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def render(view: StatusView, now_ns: int | None = None) -> str:
    now_ns = time.time_ns() if now_ns is None else now_ns
    lines = [f"finllm status  kafka {view.kafka}  redis {view.redis}", "", "services"]
    lines.append(_service_line("kafka", view.kafka_error, f"{len(view.topics)} pipeline topics"))
    lines.append(_service_line("redis", view.redis_error, f"{len(view.health)} live heartbeats"))
    for record in view.health:
        age_s = (now_ns - record.updated_ns) / 1e9
        lines.append(f"  {record.service:<10} up    {record.instance} metrics :{record.metrics_port}  "
                     f"beat {age_s:.1f} s ago, up {(now_ns - record.started_ns) / 1e9:.0f} s")
    return "\n".join(lines + _topic_lines(view) + _throughput_lines(view.health) + _latency_lines(view.health)
                     + _adapter_lines(view.health))


def _service_line(name: str, error: str | None, detail: str) -> str:
    return f"  {name:<10} {'DOWN' if error else 'up':<5} {error or detail}"


def _topic_lines(view: StatusView) -> list[str]:
    lines = ["", "topics and lag", f"  {'topic':<28}{'parts':>6}  {'group':<22}{'lag msgs':>10}{'lag event s':>13}"]
    by_topic: dict[tuple[str, str], list[PartitionLag]] = {}
    for lag in view.lags:
        by_topic.setdefault((lag.topic, lag.group), []).append(lag)
    for topic, count in sorted(view.topics.items()):
        groups = sorted(g for t, g in by_topic if t == topic) or ["-"]
        for group in groups:
            parts = by_topic.get((topic, group), [])
            seconds = [p.event_s for p in parts if p.event_s is not None]
            msgs = f"{sum(p.messages for p in parts)}" if parts else "-"
            event = f"{max(seconds):.1f}" if seconds else "-"
            lines.append(f"  {topic:<28}{count:>6}  {group:<22}{msgs:>10}{event:>13}")
    return lines


def _throughput_lines(health: list[HealthRecord]) -> list[str]:
    rates: dict[str, float] = {}
    for record in health:
        for key, value in record.figures.items():
            if key.endswith("_per_s") and isinstance(value, (int, float)):
                name = f"{record.service} {key.removesuffix('_per_s').replace('_', ' ')}"
                rates[name] = rates.get(name, 0.0) + value
    body = [f"  {name:<34}{value:>10.1f}/s" for name, value in sorted(rates.items())]
    return ["", "throughput"] + (body or ["  (no worker heartbeats with rates yet)"])


def _latency_lines(health: list[HealthRecord]) -> list[str]:
    lines = ["", "latency tick -> forecast (recent, per inference worker)"]
    for record in (r for r in health if r.service == "inference"):
        f = record.figures
        marks = [f"{q} {_ms(f.get(f'e2e_s_{q}'))}" for q in ("p50", "p95", "p99")]
        engine = f"  engine ttft p50 {_ms(f.get('ttft_s_p50'))}" if "ttft_s_p50" in f else ""
        lines.append(f"  {record.instance:<28}{'  '.join(marks)}{engine}")
    return lines if len(lines) > 2 else lines + ["  (no inference worker)"]


def _adapter_lines(health: list[HealthRecord]) -> list[str]:
    lines = ["", "adapters"]
    for record in (r for r in health if r.service == "inference"):
        f = record.figures
        lines.append(f"  {record.instance:<28}registered {_names(f.get('adapters_registered'))}  "
                     f"loaded {_names(f.get('adapters_resident'))}  loads {f.get('adapter_loads', '-')}  "
                     f"evictions {f.get('adapter_evictions', '-')}")
    return lines if len(lines) > 2 else lines + ["  (no inference worker)"]


def _ms(seconds: Any) -> str:
    return f"{seconds * 1e3:.0f} ms" if isinstance(seconds, (int, float)) else "-"


def _names(names: Any) -> str:
    return ",".join(names) if isinstance(names, list) and names else "-"

