"""The Faust app: thin wiring of topics to the pure per-symbol processor.

`route_news` fans each news item out to `symbol-news`, one record per named symbol keyed by the
symbol, so that a symbol's ticks and news meet in the same partition (and the same worker);
`symbols` feeds both into the `Processor` and sends an inference request per fired trigger.
Every output is awaited before the agent moves on, so offsets are committed only after it.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import faust
import orjson

from agents.audit import AuditChain, AuditWriter, config_hash, new_producer_id, request_payload
from agents.config import AgentsConfig
from agents.news_dedup import NewsScreen
from agents.processor import OPEN_GATE, Fired, LateEventError, Processor
from agents.recovery import CheckpointStore, Recovery
from agents.sanitise import NewsRejected
from agents.transport import broker_url
from schemas import (DeadLetter, InferenceRequest, NewsWatermark, SchemaError, Tick, decode_news_event,
                     decode_ticks, encode)
from streams.health import mark_ready
from streams.metrics import AgentsMetrics, run_observability
from streams.settings import KafkaSettings

log = logging.getLogger("finllm.agents")
REBALANCE_TIMEOUT_S = 3.0
RELEASE_INTERVAL_S = 0.1
SESSION_TIMEOUT_S = 6.0    # a crashed worker's partitions go to a restarted one within this (measured: ~8 s)
NS_PER_S = 1_000_000_000
MAX_AHEAD_OF_WALL_NS = 86_400 * NS_PER_S       # event time a day past the wall clock: a broken clock
MAX_TICK_GAP_NS = 7 * 86_400 * NS_PER_S        # a symbol silent this long starts a new session


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


def faust_settings(kafka: KafkaSettings, *, web_port: int) -> dict[str, Any]:
    """Settings that make a worker join fast and behave on Tansu as on Apache Kafka."""
    return dict(
        broker=broker_url(kafka.bootstrap), web_enabled=False, web_port=web_port,
        web_host="127.0.0.1", topic_disable_leader=True, topic_allow_declare=False,
        broker_rebalance_timeout=REBALANCE_TIMEOUT_S, broker_session_timeout=SESSION_TIMEOUT_S,
        broker_heartbeat_interval=1.0, broker_commit_interval=0.5, consumer_auto_offset_reset="earliest",
        producer_acks=-1, producer_linger_ms=2, stream_wait_empty=False, table_cleanup_interval=3600.0,
    )


def create_app(kafka: KafkaSettings, cfg: AgentsConfig, *, web_port: int, app_id: str = "finllm-agents",
               redis_url: str | None = None) -> faust.App:
    """`redis_url` keeps the checkpoints that let a restarted worker rebuild its state (agents.recovery)."""
    app = faust.App(app_id, **faust_settings(kafka, web_port=web_port))
    topics = kafka.topics

    def raw_topic(*names: str) -> faust.TopicT:
        return app.topic(*names, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")

    requests, symbol_news, deadletter = raw_topic(topics.requests), raw_topic(topics.symbol_news), \
        raw_topic(topics.deadletter)
    processor = Processor(cfg, news_origins=topics.partitions)
    news_screen = NewsScreen.from_env(topics.prefix)
    audit_topic = raw_topic(topics.audit)
    audit = AuditWriter(AuditChain(new_producer_id(app_id)),
                        lambda key, value: audit_topic.send(key=key, value=value))
    settings_hash = config_hash(cfg, news_screen.policy)
    guard = EventGuard()
    metrics = AgentsMetrics()
    recovery = Recovery(kafka, cfg, app_id, CheckpointStore.from_url(
        redis_url, topics.prefix, app_id, metrics.redis_errors.labels("checkpoint")) if redis_url else None)
    topic_label = {t: t.removeprefix(topics.prefix) for t in topics.all()}

    async def dead(message: Any, error: Exception) -> None:
        record = DeadLetter.of(topic=message.topic, reason=getattr(error, "reason", type(error).__name__),
                               detail=str(error), key=message.key, value=message.value, stage="agents",
                               ts_wall_ns=time.time_ns(), partition=message.partition, offset=message.offset)
        metrics.deadletters.labels("agents", record.reason).inc()
        await (await deadletter.send(key=message.key, value=encode(record)))

    async def send_requests(fired: list) -> None:
        with recovery.sending(fired):
            await _send_requests(fired)

    async def _send_requests(fired: list) -> None:
        futures = []
        for f in fired:
            request = processor.request(f, time.time_ns())
            metrics.triggers.labels(f.trigger).inc()
            metrics.trigger_wait_s.observe(max(request.created_wall_ns - f.ingest_wall_ns, 0) / 1e9)
            futures.append(await requests.send(key=(request.adapter or request.symbol).encode(), value=encode(request)))
            futures.append(await audit.write(request_payload(request, window_s=cfg.long_window_s,
                                                             config_digest=settings_hash)))
        for fut in futures:
            await fut

    @app.agent(raw_topic(topics.news), name="route-news")
    async def route_news(stream: faust.StreamT) -> None:
        """Fan news out to its symbols' partitions, and each watermark to every partition. News is
        screened first (agents.news_dedup): sanitised, and blocked or duplicate items dead-lettered."""
        async for event in stream.events():
            metrics.events_in.labels(topic_label.get(event.message.topic, "other")).inc()
            try:
                item = decode_news_event(event.value)
                guard.check_time(item.ts_ns, time.time_ns())
                if not isinstance(item, NewsWatermark):
                    item = await news_screen.admit(item)
            except (SchemaError, NewsRejected) as error:
                await dead(event.message, error)
                continue
            if isinstance(item, NewsWatermark):  # idempotent (a max): a lost one is superseded, so no wait
                value = encode(NewsWatermark(item.source, item.ts_ns, event.message.partition))
                for partition in range(topics.partitions):
                    await symbol_news.send(value=value, partition=partition)
                continue
            value = encode(item)
            sends = [await symbol_news.send(key=s.encode(), value=value) for s in item.symbols]
            for fut in sends:
                await fut

    @app.agent(raw_topic(topics.ticks, topics.symbol_news), name="symbols")
    async def symbols(stream: faust.StreamT) -> None:
        async for event in stream.events():
            message = event.message
            metrics.events_in.labels(topic_label.get(message.topic, "other")).inc()
            await send_requests(await recovery.rebuild(message.partition, processor, feed=replayed))
            try:
                routed = route(message, event.value, time.time_ns())
            except (SchemaError, LateEventError) as error:
                await reject(message, error)
                continue
            for raw, error in routed.rejects:   # bad ticks inside a bundle, one dead letter each
                await reject(message, error, value=raw)
            await send_requests(routed.fired)
            await send_warmups(routed.warmups)
            await asyncio.sleep(0)  # let the news router run: the stream would not yield on its own

    async def reject(message: Any, error: Exception, value: bytes | None = None) -> None:
        if isinstance(error, LateEventError):
            metrics.late_events.labels(topic_label.get(message.topic, "other")).inc()
        await dead(message if value is None else _Replaced(message, value), error)

    async def send_warmups(warmups: list[InferenceRequest]) -> None:
        for request in warmups:   # a lost warm-up only costs latency: no wait for the broker's ack
            await requests.send(key=(request.adapter or request.symbol).encode(), value=encode(request))

    def route(message: Any, value: bytes, wall_ns: int) -> Routed:
        recovery.passed(message.topic, message.partition, message.offset)
        if message.topic == topics.ticks:
            return route_ticks(message, value, wall_ns)
        item = decode_news_event(value)
        guard.check_time(item.ts_ns, wall_ns)
        if isinstance(item, NewsWatermark):
            return Routed(processor.on_news_watermark(item.ts_ns, item.origin, wall_ns, message.partition))
        symbol = (message.key or b"").decode()
        fired = processor.on_news(item, symbol, wall_ns, message.partition)
        recovery.ledger.on_news(message.partition, item.ts_ns, message.offset)
        warmup = processor.warmup(symbol, time.time_ns())
        return Routed(fired, warmups=[warmup] if warmup else [])

    def route_ticks(message: Any, value: bytes, wall_ns: int) -> Routed:
        """One tick (its errors raise: the record is dead-lettered) or a bundle (bad ticks go alone)."""
        ticks, bad = decode_ticks(value)
        routed = Routed([], [(orjson.dumps(row), error) for row, error in bad])
        for tick in ticks:
            try:
                routed.fired.extend(guard.on_tick(processor, tick, wall_ns=wall_ns, partition=message.partition))
            except (SchemaError, LateEventError) as error:
                if len(ticks) == 1 and not bad:
                    raise
                routed.rejects.append((encode(tick), error))
                continue
            recovery.ledger.on_tick(tick.symbol, tick.ts_ns, message.offset)
        return routed

    def replayed(record: Any) -> list:
        """A record re-read to rebuild state: its dead letter, if any, went out before the crash."""
        try:
            return route(record, record.value, time.time_ns()).fired
        except (SchemaError, LateEventError):
            return []

    @app.timer(RELEASE_INTERVAL_S)
    async def release() -> None:
        """Triggers waiting for news that no watermark announces go after the grace period."""
        await send_requests(processor.release_all(time.time_ns()))
        await recovery.save(processor)
        metrics.observe_buffers(sum(len(s.held) for s in processor.states.values()), len(processor.states))

    @app.task
    async def observe() -> None:
        """Metrics endpoint, Redis heartbeat and this group's lag, for the worker's lifetime."""
        await run_observability(metrics, kafka, {app.conf.id: [topics.ticks, topics.symbol_news, topics.news]})

    @app.on_rebalance_complete.connect
    async def ready(sender: Any, **kwargs: Any) -> None:
        owned = sorted(tp.partition for tp in app.consumer.assignment() if tp.topic == topics.ticks)
        log.info("assigned %s partitions %s", topics.ticks, owned)
        mark_ready()

    return app


@dataclass(slots=True)
class Routed:
    """What one record did: triggers fired, bad ticks of a bundle (raw bytes, error), warm-up requests."""

    fired: list[Fired]
    rejects: list[tuple[bytes, Exception]] = field(default_factory=list)
    warmups: list[InferenceRequest] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Replaced:
    """A message seen through its dead-letter fields, with the value of one bad tick of its bundle."""

    message: Any
    value: bytes

    def __getattr__(self, name: str) -> Any:
        return getattr(self.message, name)
