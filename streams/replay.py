"""Replay a tape into `ticks` and `news` in event-time order, paced or as fast as possible."""
from __future__ import annotations

import asyncio
import sys
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import orjson
from tqdm import tqdm

from schemas import NewsWatermark, encode
from schemas.units import NS_PER_MS, NS_PER_S
from streams.metrics import ReplayMetrics, run_observability
from streams.producer import make_producer
from streams.settings import KafkaSettings
from streams.tape import Tape

MAX_SLEEP_S = 1.0
WATERMARK_EVERY_NS = NS_PER_S          # a news watermark as event time enters each new second ...
WATERMARK_MIN_GAP_S = 0.02             # ... at most 50 a second of wall time (fast replays need few)
WATERMARK_SOURCE = "replay"
PACED_LINGER_MS = 2      # a paced replay is a live feed: a record (a news watermark above all) goes out at once
MAX_LINGER_MS = 20       # as fast as possible: fuller produce batches


@dataclass(frozen=True, slots=True)
class ReplayStats:
    ticks: int
    news: int
    duration_s: float
    max_lag_s: float  # how far publishing fell behind the paced schedule

    @property
    def events(self) -> int:
        return self.ticks + self.news


def record_bytes(row: dict[str, Any]) -> bytes:
    """A tape row as sent on the wire: JSON without null fields. Not validated: bad rows reach the
    agents, which dead-letter them, exactly as a live feed's would."""
    return orjson.dumps({k: v for k, v in row.items() if v is not None})


def record_key(kind: str, row: dict[str, Any]) -> bytes | None:
    symbol = row.get("symbol") if kind == "tick" else (row.get("symbols") or [None])[0]
    return None if symbol is None else str(symbol).encode()


async def replay(tape: Tape, settings: KafkaSettings, *, speed: float | None = None,
                 progress: bool | None = None, metrics: ReplayMetrics | None = None,
                 bundle_ms: int = 0) -> ReplayStats:
    """`speed` is a multiple of real time (1.0 = as recorded); None publishes as fast as possible.
    `bundle_ms` > 0 sends each symbol's ticks as bundles spanning up to that much event time (one
    Kafka record each: the agents then pay their per-record cost once per bundle, not per tick).
    Metrics are served (FINLLM_METRICS_PORT) while it runs."""
    if speed is not None and speed <= 0:
        raise ValueError("speed must be > 0")
    metrics = metrics or ReplayMetrics()
    topics = settings.topics
    counts = {"tick": 0, "news": 0}
    producer = make_producer(settings, linger_ms=PACED_LINGER_MS if speed else MAX_LINGER_MS, max_batch_size=256 * 1024)
    await producer.start()
    observing = asyncio.create_task(run_observability(metrics, settings))
    started = time.monotonic()
    pacer = _Pacer(speed)
    try:
        news_partitions = sorted(await producer.partitions_for(topics.news))
        bar = tqdm(total=len(tape.ticks) + len(tape.news), unit="ev", disable=not _show(progress))
        marked_ns, marked_at = None, 0.0
        bundler = TickBundler(bundle_ms * NS_PER_MS)
        for kind, row in tape.events():
            ts_ns = row.get("ts_ns")
            await pacer.wait(ts_ns)
            if isinstance(ts_ns, int) and _marks(ts_ns, marked_ns, marked_at):
                await _news_watermark(producer, topics.news, news_partitions, ts_ns)
                marked_ns, marked_at = ts_ns, time.monotonic()
            for key, value in bundler.due(ts_ns):
                await producer.send(topics.ticks, value, key=key)
            if kind == "tick" and bundler.window_ns:
                bundler.add(row)
            else:
                topic = topics.ticks if kind == "tick" else topics.news
                await producer.send(topic, record_bytes(row), key=record_key(kind, row))
            counts[kind] += 1
            metrics.events_sent.labels(kind).inc()
            metrics.lag_s.set(pacer.lag_s)
            bar.update(1)
        for key, value in bundler.due(None):
            await producer.send(topics.ticks, value, key=key)
        if marked_ns is not None:
            await _news_watermark(producer, topics.news, news_partitions, max(marked_ns, tape.end_ns or 0) + 1)
        await producer.flush()
        bar.close()
    finally:
        await producer.stop()
        observing.cancel()
        await asyncio.gather(observing, return_exceptions=True)
    return ReplayStats(counts["tick"], counts["news"], time.monotonic() - started, pacer.max_lag_s)


def _marks(ts_ns: int, marked_ns: int | None, marked_at: float) -> bool:
    """Whether a news watermark goes out before the event at `ts_ns`: on entering a new second of event
    time (so a cadence trigger's first later tick goes out with the mark that releases it), at most
    every WATERMARK_MIN_GAP_S of wall time."""
    if marked_ns is None:
        return True
    return (ts_ns // WATERMARK_EVERY_NS > marked_ns // WATERMARK_EVERY_NS
            and time.monotonic() - marked_at >= WATERMARK_MIN_GAP_S)


async def _news_watermark(producer: Any, topic: str, partitions: list[int], ts_ns: int) -> None:
    """Promise no more news before `ts_ns` (all of it is sent: events go out in event-time order,
    and at equal times ticks go before news, so a mark at a tick's time covers only earlier news)."""
    value = encode(NewsWatermark(WATERMARK_SOURCE, ts_ns))
    for partition in partitions:
        await producer.send(topic, value, partition=partition)


class TickBundler:
    """Groups each symbol's consecutive ticks into bundles spanning at most `window_ns` of event time."""

    def __init__(self, window_ns: int) -> None:
        self.window_ns = window_ns
        self.open: dict[str, tuple[int, list[dict[str, Any]]]] = {}   # symbol -> (first ts_ns, rows)
        self.order: deque[tuple[int, str]] = deque()                  # (first ts_ns, symbol) as opened

    def add(self, row: dict[str, Any]) -> None:
        symbol = str(row.get("symbol"))
        if symbol not in self.open:
            first_ns = row.get("ts_ns") if isinstance(row.get("ts_ns"), int) else 0
            self.open[symbol] = (first_ns, [])
            self.order.append((first_ns, symbol))
        self.open[symbol][1].append({k: v for k, v in row.items() if v is not None and k != "symbol"})

    def due(self, ts_ns: Any) -> list[tuple[bytes, bytes]]:
        """Bundles whose window closed before `ts_ns` (all of them when it is None), as (key, value)."""
        out = []
        while self.order and (not isinstance(ts_ns, int) or self.order[0][0] <= ts_ns - self.window_ns):
            _, symbol = self.order.popleft()
            _, rows = self.open.pop(symbol)
            out.append((symbol.encode(), orjson.dumps({"kind": "bundle", "symbol": symbol, "ticks": rows})))
        return out


def _show(progress: bool | None) -> bool:
    return sys.stderr.isatty() if progress is None else progress


class _Pacer:
    """Sleeps so that event time advances at `speed` times wall time; records how far it fell behind."""

    def __init__(self, speed: float | None) -> None:
        self.speed = speed
        self.origin: tuple[int, float] | None = None
        self.max_lag_s = 0.0
        self.lag_s = 0.0

    async def wait(self, ts_ns: Any) -> None:
        if self.speed is None or not isinstance(ts_ns, int):
            return
        if self.origin is None:
            self.origin = (ts_ns, time.monotonic())
        due = self.origin[1] + (ts_ns - self.origin[0]) / NS_PER_S / self.speed
        while (ahead := due - time.monotonic()) > 0:
            await asyncio.sleep(min(ahead, MAX_SLEEP_S))
        self.max_lag_s = max(self.max_lag_s, -ahead)
        self.lag_s = -ahead
