"""The latest forecast of each symbol, kept in Redis as one hash per symbol.

Beside the forecast the hash keeps the prompt it was scored on (`prompt`: what the model saw, its news
and market features), so that `finllm explain` can ask the model about that forecast and nothing newer;
both are replaced together, by one script, so a stored prompt always belongs to the stored forecast."""
from __future__ import annotations

from typing import Any

import orjson
import redis.asyncio as aioredis

from schemas import Forecast, encode
from schemas.forecast import MAX_PROMPT_CHARS

MAX_STORED_PROMPT_CHARS = MAX_PROMPT_CHARS   # a longer prompt is not kept (a valid request's never is longer)

# Replace the hash only when the new forecast is not older than the stored one (replays, retries), and,
# for the same forecast id, only with a later revision (a deep-tier answer replaces the base one, never
# the reverse: a base copy redelivered after the deep one keeps the deep one).
_STORE_IF_NEWER = """
local cur = redis.call('HMGET', KEYS[1], 'ts_ns', 'id', 'revision')
if cur[1] and tonumber(cur[1]) > tonumber(ARGV[1]) then return 0 end
if cur[2] == ARGV[2] and tonumber(cur[3] or '0') > tonumber(ARGV[10]) then return 0 end
redis.call('HSET', KEYS[1], 'ts_ns', ARGV[1], 'id', ARGV[2], 'direction', ARGV[3],
           'p_up', ARGV[4], 'p_down', ARGV[5], 'p_flat', ARGV[6], 'status', ARGV[7], 'json', ARGV[8],
           'revision', ARGV[10], 'tier', ARGV[11])
if ARGV[9] ~= '' then redis.call('HSET', KEYS[1], 'prompt', ARGV[9]) else redis.call('HDEL', KEYS[1], 'prompt') end
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

    async def store(self, forecast: Forecast, prompt: str | None = None) -> bool:
        """Keep `forecast` (and the prompt it was scored on) unless a newer forecast of its symbol, or a later
        revision of the same forecast id, is kept."""
        kept = prompt if prompt and len(prompt) <= MAX_STORED_PROMPT_CHARS else ""
        args = [forecast.ts_ns, forecast.id, forecast.direction, forecast.p_up, forecast.p_down, forecast.p_flat,
                forecast.status, encode(forecast), kept, forecast.revision, forecast.tier]
        return bool(await self._script(keys=[latest_key(forecast.symbol, self.prefix)], args=args))

    async def read(self, symbol: str) -> dict[str, Any] | None:
        raw = await self.client.hget(latest_key(symbol, self.prefix), "json")
        return None if raw is None else orjson.loads(raw)

    async def read_with_prompt(self, symbol: str) -> tuple[dict[str, Any] | None, str | None]:
        """(the latest forecast, the prompt it was scored on): read together, so they belong together."""
        raw, prompt = await self.client.hmget(latest_key(symbol, self.prefix), ["json", "prompt"])
        return (None if raw is None else orjson.loads(raw)), (None if prompt is None else prompt.decode())

    async def close(self) -> None:
        await self.client.aclose()
