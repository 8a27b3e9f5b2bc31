"""What the agents do with a batch of records: route news, feed ticks and symbol news to the processor,
send the requests of fired triggers, dead-letter bad records. Kafka-free except for the sends it is given.

`news` items are screened (agents.news_dedup) and fanned out to `symbol-news`, one record per named
symbol keyed by the symbol, so that a symbol's ticks and news meet in the same partition (and worker);
each news watermark goes to every partition. `ticks` and `symbol-news` feed the `Processor`, and each
fired trigger becomes an inference request (and an audit entry). Every output's delivery future goes
into the batch's `Outbox`; the intake commits the batch's offsets only after `Outbox.flush`.
"""
from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import orjson

from agents.audit import AuditWriter, request_payload
from agents.config import AgentsConfig
from agents.news_dedup import NewsScreen
from agents.processor import OPEN_GATE, Fired, LateEventError, Processor
from agents.recovery import Recovery
from agents.sanitise import NewsRejected
from schemas import (DeadLetter, InferenceRequest, NewsWatermark, SchemaError, Tick, decode_news_event, decode_ticks,
                     encode)
from schemas.units import NS_PER_S
from agents.metrics import AgentsMetrics
from streams.topics import Topics

log = logging.getLogger("finllm.agents")
MAX_AHEAD_OF_WALL_NS = 86_400 * NS_PER_S       # event time a day past the wall clock: a broken clock
MAX_TICK_GAP_NS = 7 * 86_400 * NS_PER_S        # a symbol silent this long starts a new session
ALIGN_AHEAD_S = 120      # a partition's ticks may run this far ahead of its oldest trigger waiting for news


class EventGuard:
    """Bounds what a schema-valid event with a wild timestamp can do to the processor.

    An event more than `max_ahead_ns` past the wall clock is rejected (`ts_in_future`): it would
    move the symbol's watermark so far that every real tick after it is late. A tick more than
    `max_gap_ns` after its symbol's newest one (a feed back after a long silence, or a first tick
    from years ago) starts a new session: the held triggers fire and the state is dropped, rather
    than firing a stale-window trigger for every cadence step in the gap (millions for years)."""

    def __init__(self, max_ahead_ns: int = MAX_AHEAD_OF_WALL_NS, max_gap_ns: int = MAX_TICK_GAP_NS) -> None:
        self.max_ahead_ns, self.max_gap_ns = max_ahead_ns, max_gap_ns
        self.sessions_reset = 0

    def check_time(self, ts_ns: int, wall_ns: int) -> None:
        if ts_ns - wall_ns > self.max_ahead_ns:
            raise SchemaError("ts_in_future", f"event time {ts_ns} is over {self.max_ahead_ns // NS_PER_S} s "
                                              f"past the wall clock {wall_ns}")

    def on_tick(self, processor: Processor, tick: Tick, *, wall_ns: int, partition: int) -> list[Fired]:
        self.check_time(tick.ts_ns, wall_ns)
        state = processor.states.get(tick.symbol)
        fired: list[Fired] = []
        if state is not None and state.newest_tick_ns is not None and \
                tick.ts_ns - state.newest_tick_ns > self.max_gap_ns:
            log.warning("%s: tick at %d is %d s after the previous one: new session", tick.symbol, tick.ts_ns,
                        (tick.ts_ns - state.newest_tick_ns) // NS_PER_S)
            fired = state.release(wall_ns, OPEN_GATE)
            del processor.states[tick.symbol]
            self.sessions_reset += 1
            return fired + processor.on_tick(tick, wall_ns, partition)
        return processor.on_tick(tick, wall_ns, partition)


Send = Callable[..., Awaitable[Any]]   # send(key=, value=, partition=) -> awaitable delivery future


@dataclass(frozen=True, slots=True)
class Sinks:
    """The agents' outputs: one `Send` per topic."""

    requests: Send
    symbol_news: Send
    deadletter: Send


class Outbox:
    """Delivery futures of one batch's outputs, and the trigger times whose requests are among them
    (a checkpoint must not pass a trigger before its request is delivered: agents.recovery)."""

    def __init__(self, recovery: Recovery) -> None:
        self.recovery = recovery
        self.futures: list[Any] = []
        self.inflight: Counter[int] = Counter()

    def sending(self, fired: list[Fired]) -> None:
        times = Counter(f.ts_ns for f in fired)
        self.inflight.update(times)
        self.recovery.hold(times)

    async def flush(self) -> None:
        try:
            for future in self.futures:
                await future
        finally:
            self.recovery.let_go(self.inflight)
            self.futures, self.inflight = [], Counter()


class Stage:
    def __init__(self, cfg: AgentsConfig, topics: Topics, sinks: Sinks, *, recovery: Recovery, audit: AuditWriter,
                 news_screen: NewsScreen, metrics: AgentsMetrics, settings_hash: str) -> None:
        self.cfg, self.topics, self.sinks = cfg, topics, sinks
        self.recovery, self.audit, self.news_screen, self.metrics = recovery, audit, news_screen, metrics
        self.settings_hash = settings_hash
        self.processor = Processor(cfg, news_origins=topics.partitions)
        self.guard = EventGuard()
        self.topic_label = {t: t.removeprefix(topics.prefix) for t in topics.all()}
        self.align_bound_ns = min(ALIGN_AHEAD_S, cfg.allowed_lateness_s // 2) * NS_PER_S

    async def handle(self, batch: dict[Any, list[Any]]) -> dict[Any, int]:
        """Every record of a batch, then every output delivered (raises if one is not). A ticks partition
        whose symbol ran too far ahead of the news stream (`Processor.ahead`) is left after that record:
        returns {partition: offset of its first record not handled}, to be read again once it resumes."""
        outbox, stopped = Outbox(self.recovery), {}
        for tp, records in sorted(batch.items(), key=lambda item: item[0].topic == self.topics.ticks):
            # symbol-news before ticks: a batch's news is in place before the ticks that follow it read it
            self.metrics.events_in.labels(self.topic_label.get(tp.topic, "other")).inc(len(records))
            on_record = self.route_news if tp.topic == self.topics.news else self.on_record
            for i, record in enumerate(records):
                if await on_record(record, outbox) and i + 1 < len(records):
                    stopped[tp] = records[i + 1].offset
                    break
        await outbox.flush()
        return stopped

    def hold_back(self) -> set[tuple[str, int]]:
        """(topic, partition) of the tick partitions to pause: too far ahead of the news stream."""
        return {(self.topics.ticks, p) for p in self.processor.partitions_ahead(self.align_bound_ns, time.time_ns())}

    async def release(self) -> None:
        """For a timer: triggers waiting for news that no watermark announces go after the grace period."""
        outbox = Outbox(self.recovery)
        await self.send_requests(self.processor.release_all(time.time_ns()), outbox)
        await outbox.flush()

    # news -> symbol-news ------------------------------------------------------------------------
    async def route_news(self, record: Any, outbox: Outbox) -> None:
        try:
            item = decode_news_event(record.value)
            self.guard.check_time(item.ts_ns, time.time_ns())
            if not isinstance(item, NewsWatermark):
                item = await self.news_screen.admit(item)
        except (SchemaError, NewsRejected) as error:
            await self.dead(record, error, outbox)
            return
        if isinstance(item, NewsWatermark):   # idempotent (a max): a lost one is superseded
            value = encode(NewsWatermark(item.source, item.ts_ns, record.partition))
            for partition in range(self.topics.partitions):
                outbox.futures.append(await self.sinks.symbol_news(value=value, partition=partition))
            return
        value = encode(item)
        for symbol in item.symbols:
            outbox.futures.append(await self.sinks.symbol_news(key=symbol.encode(), value=value))

    # ticks and symbol-news -> processor -> requests ---------------------------------------------
    async def on_record(self, record: Any, outbox: Outbox) -> bool:
        """Handles one ticks or symbol-news record; True when its partition should pause after it."""
        if record.partition not in self.recovery.seen:
            await self.send_requests(await self.recovery.rebuild(record.partition, self.processor,
                                                                 feed=self.replayed), outbox)
        try:
            routed = self.route(record, record.value, time.time_ns())
        except (SchemaError, LateEventError) as error:
            await self.reject(record, error, outbox)
            return False
        for raw, error in routed.rejects:   # bad ticks inside a bundle, one dead letter each
            await self.reject(record, error, outbox, value=raw)
        if routed.fired:
            await self.send_requests(routed.fired, outbox)
        for request in routed.warmups:
            await self.send_warmup(request)
        return routed.ahead

    async def send_warmup(self, request: InferenceRequest) -> None:
        """A lost warm-up only costs latency: its delivery is not awaited."""
        await self.sinks.requests(key=(request.adapter or request.symbol).encode(), value=encode(request))

    def route(self, record: Any, value: bytes, wall_ns: int) -> Routed:
        self.recovery.passed(record.topic, record.partition, record.offset)
        if record.topic == self.topics.ticks:
            return self.route_ticks(record, value, wall_ns)
        item = decode_news_event(value)
        self.guard.check_time(item.ts_ns, wall_ns)
        processor = self.processor
        if isinstance(item, NewsWatermark):
            return Routed(processor.on_news_watermark(item.ts_ns, item.origin, wall_ns, record.partition))
        symbol = (record.key or b"").decode()
        fired = processor.on_news(item, symbol, wall_ns, record.partition)
        self.recovery.ledger.on_news(record.partition, item.ts_ns, record.offset)
        return Routed(fired)

    def route_ticks(self, record: Any, value: bytes, wall_ns: int) -> Routed:
        """One tick (its errors raise: the record is dead-lettered) or a bundle (bad ticks go alone)."""
        ticks, bad = decode_ticks(value)
        routed = Routed([], [(orjson.dumps(row), error) for row, error in bad])
        guard, processor, ledger = self.guard, self.processor, self.recovery.ledger
        for tick in ticks:
            try:
                routed.fired.extend(guard.on_tick(processor, tick, wall_ns=wall_ns, partition=record.partition))
            except (SchemaError, LateEventError) as error:
                if len(ticks) == 1 and not bad:
                    raise
                routed.rejects.append((encode(tick), error))
                continue
            ledger.on_tick(tick.symbol, tick.ts_ns, record.offset)
        if ticks:
            routed.ahead = processor.ahead(ticks[-1].symbol, self.align_bound_ns, wall_ns)
        warmup = processor.due_warmup(ticks[-1].symbol, time.time_ns()) if ticks else None
        if warmup is not None:
            routed.warmups.append(warmup)
        return routed

    def replayed(self, record: Any) -> list:
        """A record re-read to rebuild state: its dead letter, if any, went out before the crash."""
        try:
            return self.route(record, record.value, time.time_ns()).fired
        except (SchemaError, LateEventError):
            return []

    async def send_requests(self, fired: list[Fired], outbox: Outbox) -> None:
        outbox.sending(fired)
        metrics, cfg = self.metrics, self.cfg
        for f in fired:
            request = self.processor.request(f, time.time_ns())
            metrics.triggers.labels(f.trigger).inc()
            metrics.trigger_wait_s.observe(max(request.created_wall_ns - f.ingest_wall_ns, 0) / NS_PER_S)
            outbox.futures.append(await self.sinks.requests(key=(request.adapter or request.symbol).encode(),
                                                            value=encode(request)))
            outbox.futures.append(await self.audit.write(request_payload(request, window_s=cfg.long_window_s,
                                                                         config_digest=self.settings_hash)))
            warmup = self.processor.rewarm_after(f, time.time_ns())
            if warmup is not None:
                await self.send_warmup(warmup)

    # dead letters -------------------------------------------------------------------------------
    async def reject(self, record: Any, error: Exception, outbox: Outbox, value: bytes | None = None) -> None:
        if isinstance(error, LateEventError):
            self.metrics.late_events.labels(self.topic_label.get(record.topic, "other")).inc()
        await self.dead(record if value is None else _Replaced(record, value), error, outbox)

    async def dead(self, record: Any, error: Exception, outbox: Outbox) -> None:
        letter = DeadLetter.of(topic=record.topic, reason=getattr(error, "reason", type(error).__name__),
                               detail=str(error), key=record.key, value=record.value, stage="agents",
                               ts_wall_ns=time.time_ns(), partition=record.partition, offset=record.offset)
        self.metrics.deadletters.labels("agents", letter.reason).inc()
        outbox.futures.append(await self.sinks.deadletter(key=record.key, value=encode(letter)))


@dataclass(slots=True)
class Routed:
    """What one record did: triggers fired, bad ticks of a bundle (raw bytes, error), warm-up requests."""

    fired: list[Fired]
    rejects: list[tuple[bytes, Exception]] = field(default_factory=list)
    warmups: list[InferenceRequest] = field(default_factory=list)
    ahead: bool = False      # the ticks' symbol ran too far ahead of the news stream: pause the partition


@dataclass(frozen=True, slots=True)
class _Replaced:
    """A record seen through its dead-letter fields, with the value of one bad tick of its bundle."""

    record: Any
    value: bytes

    def __getattr__(self, name: str) -> Any:
        return getattr(self.record, name)
