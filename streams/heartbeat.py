"""Worker heartbeats in Redis: a small hash per process that expires unless renewed.

Key `<prefix>finllm:health:<service>:<host>-<pid>` (host too: in containers every worker is pid 1),
fields `service`, `instance`, `metrics_port`, `started_ns`, `updated_ns` and `figures` (JSON: the
process's key figures, with a `*_per_s` rate next to each `*_total` counter). `finllm status` reads them.
"""
from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from typing import Any, Mapping

import orjson
import redis.asyncio as aioredis

from schemas.units import NS_PER_S

TTL_S = 15


def health_key(service: str, instance: str, prefix: str = "") -> str:
    return f"{prefix}finllm:health:{service}:{instance}"


def health_pattern(prefix: str = "") -> str:
    return f"{prefix}finllm:health:*"


@dataclass(frozen=True, slots=True)
class HealthRecord:
    service: str
    instance: str
    metrics_port: int
    started_ns: int
    updated_ns: int
    figures: dict[str, Any]

    @classmethod
    def from_hash(cls, fields: Mapping[bytes, bytes]) -> HealthRecord:
        text = {k.decode(): v.decode() for k, v in fields.items()}
        return cls(text["service"], text["instance"], int(text["metrics_port"]), int(text["started_ns"]),
                   int(text["updated_ns"]), orjson.loads(text.get("figures", "{}")))


class Heartbeat:
    def __init__(self, client: aioredis.Redis, service: str, metrics_port: int, prefix: str = "",
                 ttl_s: int = TTL_S) -> None:
        self.client, self.service, self.metrics_port, self.ttl_s = client, service, metrics_port, ttl_s
        self.instance = f"{socket.gethostname()}-{os.getpid()}"
        self.key = health_key(service, self.instance, prefix)
        self.started_ns = time.time_ns()
        self.previous: tuple[int, dict[str, Any]] | None = None

    @classmethod
    def connect(cls, url: str, service: str, metrics_port: int, prefix: str = "") -> Heartbeat:
        return cls(aioredis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0), service, metrics_port,
                   prefix)

    async def beat(self, figures: Mapping[str, Any]) -> bool:
        """Write the hash with a fresh TTL; False (and nothing raised) when Redis is away."""
        now_ns = time.time_ns()
        fields = {"service": self.service, "instance": self.instance, "metrics_port": self.metrics_port,
                  "started_ns": self.started_ns, "updated_ns": now_ns,
                  "figures": orjson.dumps(self._with_rates(now_ns, dict(figures)))}
        try:
            async with self.client.pipeline(transaction=True) as pipe:
                await pipe.hset(self.key, mapping=fields).expire(self.key, self.ttl_s).execute()
        except (aioredis.RedisError, OSError):
            return False
        return True

    def _with_rates(self, now_ns: int, figures: dict[str, Any]) -> dict[str, Any]:
        previous, self.previous = self.previous, (now_ns, figures)
        if previous is None or now_ns <= previous[0]:
            return figures
        elapsed_s = (now_ns - previous[0]) / NS_PER_S
        rates = {k.removesuffix("_total") + "_per_s": (v - previous[1].get(k, 0)) / elapsed_s
                 for k, v in figures.items() if k.endswith("_total") and isinstance(v, (int, float))}
        return figures | rates

    async def close(self) -> None:
        try:
            await self.client.delete(self.key)
        except (aioredis.RedisError, OSError):
            pass
        await self.client.aclose()


async def read_health(client: aioredis.Redis, prefix: str = "") -> list[HealthRecord]:
    """Every live heartbeat under `prefix`, sorted by service and instance."""
    records = []
    async for key in client.scan_iter(match=health_pattern(prefix), count=100):
        fields = await client.hgetall(key)
        if fields:
            records.append(HealthRecord.from_hash(fields))
    return sorted(records, key=lambda r: (r.service, r.instance))
