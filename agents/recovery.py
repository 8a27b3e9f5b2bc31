"""Rebuild the agents' in-memory state after a crash, so no trigger is lost and none changes.

The processor's state (tick windows, news, held triggers, news watermarks) lives in memory, while
the intake (agents.intake) commits a partition's offsets as soon as a batch is processed. A worker restarted after a
crash would resume at the committed offset with empty windows: the triggers it was holding would
be lost and the next ones would read short windows. So the agents keep, per partition, a
checkpoint in Redis (every CHECKPOINT_EVERY_S):

- `ticks_offset`, `news_offset`: the oldest `ticks` and `symbol-news` records the state still
  holds (a mirror of the tick windows' and the news lists' eviction, by offset);
- `resume_ns`: the earliest trigger not yet sent (held or waiting triggers, else the tick
  watermark): every trigger before it had been sent when the checkpoint was written.

A worker taking a partition it holds no state for re-reads both topics from the checkpoint up to
the group's committed offsets, feeds them to the processor, and sends the triggers that fire with
T >= resume_ns (their requests may go twice: ids are idempotent); nothing else is sent again.
Bound: a news item arriving behind `resume_ns` in the last CHECKPOINT_EVERY_S before a crash may
lose its trigger. Without Redis the agents run on, unable to rebuild (logged).
"""
from __future__ import annotations

import heapq
import logging
import time
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from agents.config import NS_PER_S, AgentsConfig
from agents.processor import Processor
from streams.settings import KafkaSettings

log = logging.getLogger("finllm.agents.recovery")
CHECKPOINT_EVERY_S = 0.5
MAX_NEWS_OFFSETS = 10_000
REBUILD_TIMEOUT_MS = 5_000


@dataclass(frozen=True, slots=True)
class Checkpoint:
    ticks_offset: int
    news_offset: int
    resume_ns: int

    def encode(self) -> bytes:
        return orjson.dumps([self.ticks_offset, self.news_offset, self.resume_ns])

    @classmethod
    def decode(cls, raw: bytes) -> Checkpoint:
        return cls(*orjson.loads(raw))


class OffsetLedger:
    """Offsets of the records one worker's processor still holds, per partition."""

    def __init__(self, cfg: AgentsConfig) -> None:
        self.keep_ticks_ns = (cfg.long_window_s + cfg.allowed_lateness_s) * NS_PER_S   # as the tick window
        self.keep_news_ns = (cfg.news_window_s + cfg.allowed_lateness_s) * NS_PER_S
        self.ticks: dict[str, deque[tuple[int, int]]] = {}                  # symbol -> (ts_ns, offset)
        self.news: dict[int, deque[tuple[int, int]]] = {}                   # partition -> (ts_ns, offset)
        self.position: dict[tuple[str, int], int] = {}                     # (topic kind, partition) -> next

    def on_tick(self, symbol: str, ts_ns: int, offset: int) -> None:
        rows = self.ticks.setdefault(symbol, deque())
        rows.append((ts_ns, offset))
        newest_ns = max(ts_ns, rows[0][0])
        while len(rows) > 1 and rows[1][0] <= newest_ns - self.keep_ticks_ns:
            rows.popleft()

    def on_news(self, partition: int, ts_ns: int, offset: int) -> None:
        rows = self.news.setdefault(partition, deque(maxlen=MAX_NEWS_OFFSETS))
        rows.append((ts_ns, offset))

    def passed(self, kind: str, partition: int, offset: int) -> None:
        self.position[(kind, partition)] = offset + 1

    def checkpoint(self, partition: int, processor: Processor) -> Checkpoint | None:
        states = [s for s in processor.states.values() if s.partition == partition]
        resume = [t for s in states if (t := pending_from_ns(s)) is not None]
        ticks_next, news_next = self.position.get(("ticks", partition)), self.position.get(("news", partition))
        if not resume or ticks_next is None or news_next is None:
            return None
        tick_offsets = [self.ticks[s.symbol][0][1] for s in states if self.ticks.get(s.symbol)]
        return Checkpoint(min(tick_offsets, default=ticks_next), self._news_from(partition, states, news_next),
                          min(resume))

    def _news_from(self, partition: int, states: list, news_next: int) -> int:
        marks = [s.tick_wm_ns for s in states]
        rows = self.news.get(partition, deque())
        if None in marks:                      # a symbol with news but no ticks yet keeps all its news
            return rows[0][1] if rows else news_next
        cutoff_ns = min(marks) - self.keep_news_ns
        while rows and rows[0][0] < cutoff_ns:
            rows.popleft()
        return min((offset for ts_ns, offset in rows if ts_ns >= cutoff_ns), default=news_next)


def pending_from_ns(state: Any) -> int | None:
    """The earliest trigger this symbol may still fire: held or waiting ones, else its tick watermark."""
    times = [t[0] for t in state.held] + [t[0] for t in state.waiting]
    if state.tick_wm_ns is not None:
        times.append(state.tick_wm_ns)
    return min(times, default=None)


class CheckpointStore:
    """One Redis hash per app: partition -> Checkpoint."""

    def __init__(self, client: Any, key: str, errors: Any = None) -> None:
        self.client, self.key, self.errors = client, key, errors     # errors: a counter (metrics) or None
        self.failing = False

    @classmethod
    def from_url(cls, url: str, prefix: str, app_id: str, errors: Any = None) -> CheckpointStore:
        import redis.asyncio as aioredis
        client = aioredis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)
        return cls(client, f"{prefix}finllm:agents:{app_id}:checkpoint", errors)

    async def save(self, checkpoints: dict[int, Checkpoint]) -> None:
        if not checkpoints:
            return
        try:
            await self.client.hset(self.key, mapping={str(p): c.encode() for p, c in checkpoints.items()})
            self._recovered()
        except Exception as error:   # Redis down: run on; a crash now would resume from committed offsets
            self._failed(error)

    async def load(self, partition: int) -> Checkpoint | None:
        try:
            raw = await self.client.hget(self.key, str(partition))
        except Exception as error:
            self._failed(error)
            return None
        return None if raw is None else Checkpoint.decode(raw)

    def _failed(self, error: Exception) -> None:
        if self.errors is not None:
            self.errors.inc()
        if not self.failing:
            log.warning("agent checkpoints unavailable (Redis: %s): a crash now cannot rebuild state", error)
        self.failing = True

    def _recovered(self) -> None:
        if self.failing:
            log.info("agent checkpoints written again")
        self.failing = False


async def read_range(kafka: KafkaSettings, group_id: str, partition: int,
                     start: Checkpoint) -> Iterator[tuple[str, Any]]:
    """The `ticks` and `symbol-news` records of `partition` from the checkpoint up to the group's
    committed offsets, merged by event time (each topic keeps its own order)."""
    topics = kafka.topics
    tps = {"ticks": TopicPartition(topics.ticks, partition), "news": TopicPartition(topics.symbol_news, partition)}
    consumer = AIOKafkaConsumer(**kafka.client_kwargs(), group_id=group_id, enable_auto_commit=False)
    await consumer.start()
    try:
        ends = {kind: await consumer.committed(tp) for kind, tp in tps.items()}
        starts = {"ticks": start.ticks_offset, "news": start.news_offset}
        parts = {kind: await _read(consumer, tp, starts[kind], ends[kind]) for kind, tp in tps.items()}
    finally:
        await consumer.stop()
    return heapq.merge(*parts.values(), key=_event_ns)


async def _read(consumer: AIOKafkaConsumer, tp: TopicPartition, start: int, end: int | None) -> list:
    if end is None or start >= end:
        return []
    consumer.assign([tp])
    consumer.seek(tp, start)
    records, next_offset = [], start
    while next_offset < end:
        batch = await consumer.getmany(tp, timeout_ms=REBUILD_TIMEOUT_MS)
        if not batch:
            log.warning("rebuild of %s stopped at offset %d of %d", tp, next_offset, end)
            break
        records += [r for r in batch[tp] if r.offset < end]
        next_offset = batch[tp][-1].offset + 1
    return records


def _event_ns(record: Any) -> int:
    try:
        ts_ns = orjson.loads(record.value).get("ts_ns")
    except (orjson.JSONDecodeError, AttributeError):
        return 0
    return ts_ns if isinstance(ts_ns, int) else 0


class Recovery:
    """The agents' side of it: keep the ledger and checkpoints, rebuild a partition on first sight."""

    def __init__(self, kafka: KafkaSettings, cfg: AgentsConfig, group_id: str, store: CheckpointStore | None) -> None:
        self.kafka, self.group_id, self.store = kafka, group_id, store
        self.ledger = OffsetLedger(cfg)
        self.seen: set[int] = set()                 # partitions this worker has handled
        self.inflight: Counter[int] = Counter()     # trigger times whose requests are being sent
        self.saved_at = 0.0

    def passed(self, topic: str, partition: int, offset: int) -> None:
        self.ledger.passed("ticks" if topic == self.kafka.topics.ticks else "news", partition, offset)

    def hold(self, times: Counter[int]) -> None:
        """Trigger times whose requests are on their way: checkpoints resume at or before them."""
        self.inflight.update(times)

    def let_go(self, times: Counter[int]) -> None:
        self.inflight.subtract(times)
        self.inflight += Counter()              # drop the zeros

    async def save(self, processor: Processor) -> None:
        if self.store is None or time.monotonic() - self.saved_at < CHECKPOINT_EVERY_S:
            return
        self.saved_at = time.monotonic()
        floor_ns = min(self.inflight, default=None)
        checkpoints = {p: c for p in {p for _, p in self.ledger.position}
                       if (c := self.ledger.checkpoint(p, processor)) is not None}
        if floor_ns is not None:
            checkpoints = {p: Checkpoint(c.ticks_offset, c.news_offset, min(c.resume_ns, floor_ns))
                           for p, c in checkpoints.items()}
        await self.store.save(checkpoints)

    async def rebuild(self, partition: int, processor: Processor, feed: Callable[[Any], list]) -> list:
        """On the first record of a partition this worker holds no state for: the triggers to send."""
        first_sight = partition not in self.seen
        self.seen.add(partition)
        if not first_sight or self.store is None or any(s.partition == partition for s in processor.states.values()):
            return []
        checkpoint = await self.store.load(partition)
        if checkpoint is None:
            return []
        started = time.monotonic()
        records = list(await read_range(self.kafka, self.group_id, partition, checkpoint))
        fired = [f for record in records for f in feed(record)]
        again = [f for f in fired if f.ts_ns >= checkpoint.resume_ns]
        log.info("partition %d rebuilt from %d records in %.2f s (offsets %d/%d); %d triggers sent again",
                 partition, len(records), time.monotonic() - started, checkpoint.ticks_offset,
                 checkpoint.news_offset, len(again))
        return again
