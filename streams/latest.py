"""The latest forecast of each symbol, kept in Redis as one hash per symbol."""
from __future__ import annotations

from typing import Any

import orjson
import redis.asyncio as aioredis

from schemas import Forecast, encode

# Replace the hash only when the new forecast is not older than the stored one (replays, retries).
_STORE_IF_NEWER = """
local cur = redis.call('HGET', KEYS[1], 'ts_ns')
if cur and tonumber(cur) > tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'ts_ns', ARGV[1], 'id', ARGV[2], 'direction', ARGV[3],
           'p_up', ARGV[4], 'p_down', ARGV[5], 'p_flat', ARGV[6], 'status', ARGV[7], 'json', ARGV[8])
return 1
"""


def latest_key(symbol: str, prefix: str = "") -> str:
    return f"{prefix}finllm:latest:{symbol}"


class LatestStore:
    def __init__(self, client: aioredis.Redis, prefix: str = "") -> None:
        self.client = client
        self.prefix = prefix
        self._script = client.register_script(_STORE_IF_NEWER)

    @classmethod
    def from_url(cls, url: str, prefix: str = "") -> LatestStore:
        return cls(aioredis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0), prefix)

    async def store(self, forecast: Forecast) -> bool:
        args = [forecast.ts_ns, forecast.id, forecast.direction, forecast.p_up, forecast.p_down, forecast.p_flat,
                forecast.status, encode(forecast)]
        return bool(await self._script(keys=[latest_key(forecast.symbol, self.prefix)], args=args))

    async def read(self, symbol: str) -> dict[str, Any] | None:
        raw = await self.client.hget(latest_key(symbol, self.prefix), "json")
        return None if raw is None else orjson.loads(raw)

    async def close(self) -> None:
        await self.client.aclose()
