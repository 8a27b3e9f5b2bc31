"""Reading forecasts: an async iterator for programs (a trading app needs no Kafka code of its own)."""
from __future__ import annotations

import asyncio
import uuid
from collections import OrderedDict
from typing import Any, AsyncIterator, Callable

from aiokafka import AIOKafkaConsumer

from schemas import Forecast, SchemaError, decode_forecast
from streams.settings import KafkaSettings

DEDUP_WINDOW = 100_000


async def iter_forecasts(settings: KafkaSettings, *, symbol: str | None = None, from_beginning: bool = False,
                         group_id: str | None = None) -> AsyncIterator[Forecast]:
    """Forecasts as they arrive, each id once (delivery is at-least-once, ids are idempotent).

    >>> async for forecast in iter_forecasts(KafkaSettings.from_env(), symbol="ACME"):
    ...     print(forecast.direction, forecast.p_up)
    """
    consumer = AIOKafkaConsumer(
        settings.topics.forecasts, **settings.client_kwargs(), group_id=group_id or f"finllm-tail-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest" if from_beginning else "latest", enable_auto_commit=True)
    seen: OrderedDict[str, None] = OrderedDict()
    await consumer.start()
    try:
        async for message in consumer:
            forecast = _decode(message.value)
            if forecast is None or (symbol and forecast.symbol != symbol) or forecast.id in seen:
                continue
            seen[forecast.id] = None
            if len(seen) > DEDUP_WINDOW:
                seen.popitem(last=False)
            yield forecast
    finally:
        await consumer.stop()


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
