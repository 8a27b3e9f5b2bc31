"""Producing to the pipeline: the feed API (validated ticks and news) and the dead-letter sink.

Delivery is at-least-once: the broker we embed rejects idempotent producers, so records carry
idempotent ids (news `id`, forecast `id`) and consumers deduplicate by them.
"""
from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

from aiokafka import AIOKafkaProducer

from schemas import DeadLetter, NewsItem, NewsWatermark, Quote, SchemaError, Tick, Trade, encode, tick_from_obj
from streams.settings import KafkaSettings


def make_producer(settings: KafkaSettings, **kw: Any) -> AIOKafkaProducer:
    """acks=all, no idempotence (unsupported by Tansu), small linger for batching."""
    opts = {"acks": "all", "linger_ms": 5, "enable_idempotence": False} | kw
    return AIOKafkaProducer(**settings.client_kwargs(), **opts)


class DeadLetters:
    """Sends records that failed validation to `deadletter`, with their original bytes and the reason."""

    def __init__(self, producer: AIOKafkaProducer, topic: str, stage: str) -> None:
        self.producer, self.topic, self.stage = producer, topic, stage
        self.counts: dict[str, int] = {}

    async def send(self, *, source_topic: str, error: SchemaError | Exception, key: bytes | None,
                   value: bytes | None, partition: int | None = None, offset: int | None = None) -> None:
        reason = getattr(error, "reason", type(error).__name__)
        self.counts[reason] = self.counts.get(reason, 0) + 1
        record = DeadLetter.of(topic=source_topic, reason=reason, detail=str(error), key=key, value=value,
                               stage=self.stage, ts_wall_ns=time.time_ns(), partition=partition, offset=offset)
        await self.producer.send_and_wait(self.topic, encode(record), key=key)


class FeedProducer:
    """For feed handlers: publish ticks and news, validated before they are sent.

    >>> async with FeedProducer(KafkaSettings.from_env()) as feed:
    ...     await feed.send_tick({"symbol": "ACME", "ts_ns": ..., "price": 101.2, "size": 300})
    """

    def __init__(self, settings: KafkaSettings) -> None:
        self.settings = settings
        self.producer = make_producer(settings)

    async def __aenter__(self) -> FeedProducer:
        await self.producer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.producer.stop()

    async def send_tick(self, tick: Tick | dict[str, Any]) -> None:
        """Raises SchemaError (and sends nothing) when the tick is invalid."""
        record = tick_from_obj(asdict(tick) if isinstance(tick, (Trade, Quote)) else tick)
        await self.producer.send(self.settings.topics.ticks, encode(record), key=record.symbol.encode())

    async def send_news(self, item: NewsItem | dict[str, Any]) -> None:
        record = NewsItem.from_obj(_news_obj(item) if isinstance(item, NewsItem) else item)
        await self.producer.send(self.settings.topics.news, encode(record), key=record.symbols[0].encode())

    async def send_news_watermark(self, ts_ns: int, source: str = "feed") -> None:
        """Promise that no news older than `ts_ns` will follow, so the agents need not wait for it."""
        topic = self.settings.topics.news
        value = encode(NewsWatermark.from_obj({"source": source, "ts_ns": ts_ns}))
        for partition in sorted(await self.producer.partitions_for(topic)):
            await self.producer.send(topic, value, partition=partition)

    async def flush(self) -> None:
        await self.producer.flush()


def _news_obj(item: NewsItem) -> dict[str, Any]:
    return asdict(item) | {"symbols": list(item.symbols)}
