"""The news screen of the `route-news` agent: blocked sources and sanitised text (`agents.sanitise`),
then deduplication of the same headline across sources, kept in Redis.

A news item is a duplicate when an item with another id and the same headline key was seen for any
of its symbols within `dedup_ttl_s` of event time; a re-delivery of the same id is not (at-least-once
input must not turn news into duplicates). Redis keys expire after `dedup_ttl_s` of wall time.
Without Redis (not configured, down, or slow) the check runs on a bounded in-process LRU instead,
logged once per outage and counted in `degraded_checks`; Redis is tried again after `retry_after_s`.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from agents.news_policy import NewsPolicy
from agents.sanitise import LRU_ENTRIES, LocalSeen, dedup_keys, duplicate, screen
from schemas import NewsItem
from schemas.units import NS_PER_MS

log = logging.getLogger("finllm.agents.news")
REDIS_TIMEOUT_S = 0.25
RETRY_AFTER_S = 5.0

# KEYS: one per symbol. ARGV: id, ts_ms, window_ms, expire_s. Returns the id of an earlier item with
# the same headline within the window for any of the keys, or else records this one under them all.
_SEEN_BEFORE = """
local ts, window = tonumber(ARGV[2]), tonumber(ARGV[3])
for _, key in ipairs(KEYS) do
  local seen = redis.call('GET', key)
  if seen then
    local sep = string.find(seen, '|', 1, true)
    local seen_id = string.sub(seen, sep + 1)
    if seen_id ~= ARGV[1] and math.abs(ts - tonumber(string.sub(seen, 1, sep - 1))) <= window then
      return seen_id
    end
  end
end
for _, key in ipairs(KEYS) do
  redis.call('SET', key, ARGV[2] .. '|' .. ARGV[1], 'EX', ARGV[4])
end
return false
"""


class NewsDedup:
    def __init__(self, client: aioredis.Redis | None, ttl_s: int, *, prefix: str = "",
                 retry_after_s: float = RETRY_AFTER_S, lru_entries: int = LRU_ENTRIES) -> None:
        self.client, self.ttl_s, self.prefix, self.retry_after_s = client, ttl_s, prefix, retry_after_s
        self.local = LocalSeen(lru_entries)
        self._script = None if client is None else client.register_script(_SEEN_BEFORE)
        self._redis_after = 0.0          # monotonic time before which Redis is not tried again
        self.degraded = False            # the last Redis call failed
        self.degraded_checks = 0         # checks answered by the in-process LRU

    @classmethod
    def from_url(cls, url: str | None, ttl_s: int, *, prefix: str = "", **kw) -> NewsDedup:
        client = None if not url else aioredis.from_url(
            url, socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S, retry=Retry(NoBackoff(), 0))
        if client is None:
            log.warning("news dedup: no Redis configured; using an in-process LRU")
        return cls(client, ttl_s, prefix=prefix, **kw)

    def keys(self, item: NewsItem) -> list[str]:
        return [f"{self.prefix}finllm:news-seen:{key}" for key in dedup_keys(item)]

    async def duplicate_of(self, item: NewsItem) -> str | None:
        """The id of an earlier item telling the same story for an overlapping symbol, or None."""
        keys, ts_ms, window_ms = self.keys(item), item.ts_ns // NS_PER_MS, self.ttl_s * 1000
        if self._script is not None and time.monotonic() >= self._redis_after:
            try:
                found = await self._script(keys=keys, args=[item.id, ts_ms, window_ms, self.ttl_s])
            except (RedisError, OSError, asyncio.TimeoutError) as error:
                self._degrade(error)
            else:
                self._recover()
                if found is not None:
                    return found.decode()
                # Redis may have come back empty (a restart keeps nothing): what this process saw still counts
                return self.local.seen_before(keys, item.id, ts_ms, window_ms)
        self.degraded_checks += 1
        return self.local.seen_before(keys, item.id, ts_ms, window_ms)

    def _degrade(self, error: Exception) -> None:
        if not self.degraded:
            log.warning("news dedup: Redis unavailable (%s); using an in-process LRU", error)
        self.degraded, self._redis_after = True, time.monotonic() + self.retry_after_s

    def _recover(self) -> None:
        if self.degraded:
            log.warning("news dedup: Redis is back after %d checks on the in-process LRU", self.degraded_checks)
        self.degraded = False

    async def close(self) -> None:
        if self.client is not None:
            await self.client.aclose()


class NewsScreen:
    """What `route-news` applies before fan-out: `admit(item)` returns the sanitised item or raises
    NewsRejected (blocked_source, empty_headline, duplicate) for the dead-letter topic."""

    def __init__(self, policy: NewsPolicy, dedup: NewsDedup) -> None:
        self.policy, self.dedup = policy, dedup

    @classmethod
    def from_env(cls, prefix: str = "", env: dict[str, str] | None = None) -> NewsScreen:
        env = os.environ if env is None else env
        policy = NewsPolicy.from_env(env)
        return cls(policy, NewsDedup.from_url(env.get("FINLLM_REDIS_URL"), policy.dedup_ttl_s, prefix=prefix))

    async def admit(self, item: NewsItem) -> NewsItem:
        clean = screen(item, self.policy)
        original = await self.dedup.duplicate_of(clean)
        if original is not None:
            raise duplicate(item, original, self.policy)
        return clean
