"""Reading forecasts: an async iterator for programs (a trading app needs no Kafka code of its own), and a
collector of every forecast copy and dead letter for supervisors (the demo, the reliability tests)."""
from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable

from aiokafka import AIOKafkaConsumer

from schemas import DeadLetter, Forecast, SchemaError, decode_deadletter, decode_forecast, is_later_revision
from streams.settings import KafkaSettings

DEDUP_WINDOW = 100_000


async def iter_forecasts(settings: KafkaSettings, *, symbol: str | None = None, from_beginning: bool = False,
                         group_id: str | None = None) -> AsyncIterator[Forecast]:
    """Forecasts as they arrive: each id once, and again for each later revision of it (a deep-tier answer
    after the base one); copies (delivery is at-least-once) and revisions older than one given are skipped.

    >>> async for forecast in iter_forecasts(KafkaSettings.from_env(), symbol="ACME"):
    ...     print(forecast.direction, forecast.p_up)
    """
    consumer = AIOKafkaConsumer(
        settings.topics.forecasts, **settings.client_kwargs(), group_id=group_id or f"finllm-tail-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest" if from_beginning else "latest", enable_auto_commit=True)
    seen: OrderedDict[str, Forecast] = OrderedDict()
    await consumer.start()
    try:
        async for message in consumer:
            forecast = _decode(message.value)
            if forecast is None or (symbol and forecast.symbol != symbol):
                continue
            if keep_latest(seen, forecast):
                yield forecast
    finally:
        await consumer.stop()


def keep_latest(kept: OrderedDict[str, Forecast], forecast: Forecast, window: int = DEDUP_WINDOW) -> bool:
    """Keep `forecast` in `kept` (id -> latest revision, the `window` most recent ids) if it is the first
    copy of its id or a later revision; whether it was kept."""
    previous = kept.get(forecast.id)
    if previous is not None and not is_later_revision(forecast, previous):
        return False
    kept[forecast.id] = forecast
    kept.move_to_end(forecast.id)
    if len(kept) > window:
        kept.popitem(last=False)
    return True


def _decode(value: bytes | None) -> Forecast | None:
    try:
        return decode_forecast(value or b"")
    except SchemaError:
        return None


async def consume_until(consumer: AIOKafkaConsumer, stop: asyncio.Event, take: Callable[[Any], None],
                        started: asyncio.Event | None = None, poll_ms: int = 100) -> None:
    """Start `consumer`, hand every record to `take` until `stop` is set, then stop the consumer."""
    await consumer.start()
    if started is not None:
        started.set()
    try:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=poll_ms)
            for record in (r for part in batch.values() for r in part):
                take(record)
    finally:
        await consumer.stop()


@dataclass
class ForecastCollector:
    """Every forecast copy on `forecasts` (with its monotonic arrival time) and every dead letter, from the
    oldest record on, until `stopping` is set; `done` is set once every id of `expected` has arrived.

    With a `group_id` it reads as a group member, as a real reader does: after a broker that lost its state
    comes back, the group is joined again and reads the new log from its start (a reader without a group
    keeps its positions in the lost log and skips the new records below them)."""

    kafka: KafkaSettings
    expected: set[str] = field(default_factory=set)
    group_id: str | None = None
    copies: list[tuple[float, Forecast]] = field(default_factory=list)
    deadletters: list[DeadLetter] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)      # "topic: error" of records no schema reads
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    started: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    ids: set[str] = field(default_factory=set, init=False)

    @property
    def by_id(self) -> dict[str, Forecast]:
        """The latest revision of each forecast id (its first copy)."""
        out: OrderedDict[str, Forecast] = OrderedDict()
        for _, forecast in self.copies:
            keep_latest(out, forecast, window=len(self.copies))
        return dict(out)

    @property
    def first_answers(self) -> dict[str, Forecast]:
        """The first answer to each forecast id (its revision 0: what answered the trigger, by its deadline)."""
        out: dict[str, Forecast] = {}
        for _, forecast in self.copies:
            if forecast.revision == 0:
                out.setdefault(forecast.id, forecast)
        return out

    def awaiting_revision(self) -> set[str]:
        """Ids whose latest copy was escalated: a deep-tier revision of each is still to come."""
        return {i for i, f in self.by_id.items() if f.escalated}

    def deadletter_reasons(self) -> dict[str, int]:
        return dict(Counter(d.reason for d in self.deadletters) + Counter("unreadable" for _ in self.unreadable))

    async def run(self) -> None:
        topics = self.kafka.topics
        group = {"group_id": self.group_id, "enable_auto_commit": self.group_id is not None}
        if self.group_id:
            group |= {"session_timeout_ms": 6_000, "heartbeat_interval_ms": 1_000}
        consumer = AIOKafkaConsumer(topics.forecasts, topics.deadletter, **self.kafka.client_kwargs(),
                                    auto_offset_reset="earliest", **group)
        self._check_done()
        await consume_until(consumer, self.stopping, lambda r: self._take(r.topic, r.value or b""), self.started)

    def _take(self, topic: str, value: bytes) -> None:
        try:
            if topic == self.kafka.topics.deadletter:
                self.deadletters.append(decode_deadletter(value))
            else:
                forecast = decode_forecast(value)
                self.copies.append((time.monotonic(), forecast))
                self.ids.add(forecast.id)
                self._check_done()
        except SchemaError as error:
            self.unreadable.append(f"{topic}: {error}")

    def _check_done(self) -> None:
        if self.expected <= self.ids:
            self.done.set()

    async def wait_for(self, ids: set[str], timeout_s: float) -> bool:
        """Whether every id in `ids` arrived within `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if ids <= self.ids:
                return True
            await asyncio.sleep(0.1)
        return False

    async def first_new_after(self, since: float, timeout_s: float) -> float | None:
        """Monotonic time of the first forecast copy that arrived after `since`."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            arrived = [at for at, _ in self.copies if at > since]
            if arrived:
                return min(arrived)
            await asyncio.sleep(0.05)
        return None

