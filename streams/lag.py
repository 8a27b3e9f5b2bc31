"""Consumer-group lag per topic partition, in records and in seconds of event time.

Offsets come from fetch responses (the high watermark) and the group's committed offsets, never
from ListOffsets: Tansu's memory engine answers `end_offsets` wrongly (it reported 1 for a
partition holding 500 records). Event-time lag reads `ts_ns` from the newest record and from the
oldest uncommitted one, so it holds wherever records carry event time, whatever the offsets say.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.client import AIOKafkaClient

from schemas.units import NS_PER_S
from streams.settings import KafkaSettings

FETCH_TIMEOUT_MS = 300


@dataclass(frozen=True, slots=True)
class PartitionLag:
    group: str
    topic: str
    partition: int
    committed: int | None   # None: the group has committed nothing here yet (counted from offset 0)
    high_watermark: int
    messages: int
    event_s: float | None   # None: a record without ts_ns, or nothing to read


def event_ts_ns(value: bytes | None) -> int | None:
    """`ts_ns` of a JSON record, or None."""
    try:
        ts_ns = orjson.loads(value or b"null").get("ts_ns")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return ts_ns if isinstance(ts_ns, int) else None


class LagProbe:
    """Reads committed offsets through one consumer per group (never subscribed, so it joins nothing)
    and heads of partitions through a group-less reader."""

    def __init__(self, kafka: KafkaSettings) -> None:
        self.kafka = kafka
        self.reader: AIOKafkaConsumer | None = None
        self.client: AIOKafkaClient | None = None   # metadata of all topics (a consumer's narrows to its own)
        self.groups: dict[str, AIOKafkaConsumer] = {}
        self.assigned: set[TopicPartition] = set()

    async def lag(self, group: str, topics: list[str]) -> list[PartitionLag]:
        counts = await self.partitions()
        tps = [TopicPartition(t, p) for t in topics if t in counts for p in range(counts[t])]
        reader = await self._reader()
        committed = await self._committed(group, tps)
        if not self.assigned.issuperset(tps):  # assign only on change: each assignment is logged
            self.assigned |= set(tps)
            reader.assign(sorted(self.assigned))
        return [await self._partition_lag(group, tp, committed[tp]) for tp in tps]

    async def partitions(self) -> dict[str, int]:
        """Partition count of every topic the broker has (a listing: creates nothing, even on Tansu)."""
        if self.client is None:
            self.client = AIOKafkaClient(**self.kafka.client_kwargs())
            await self.client.bootstrap()
        cluster = await self.client.fetch_all_metadata()
        return {t: len(cluster.partitions_for_topic(t) or ()) for t in sorted(cluster.topics())}

    async def _partition_lag(self, group: str, tp: TopicPartition, committed: int | None) -> PartitionLag:
        first_ts, high = await self._read_at(tp, committed or 0)
        messages = max(high - (committed or 0), 0)
        event_s = 0.0 if messages == 0 else None
        if messages and first_ts is not None:
            last_ts, _ = await self._read_at(tp, high - 1)
            event_s = None if last_ts is None else max(last_ts - first_ts, 0) / NS_PER_S
        return PartitionLag(group, tp.topic, tp.partition, committed, high, messages, event_s)

    async def _read_at(self, tp: TopicPartition, offset: int) -> tuple[int | None, int]:
        """(ts_ns of the record at `offset` or None, high watermark)."""
        reader = self.reader
        reader.seek(tp, offset)
        batch = await reader.getmany(tp, timeout_ms=FETCH_TIMEOUT_MS, max_records=1)
        records = batch.get(tp, [])
        return (event_ts_ns(records[0].value) if records else None), reader.highwater(tp) or offset

    async def _committed(self, group: str, tps: list[TopicPartition]) -> dict[TopicPartition, int | None]:
        if group not in self.groups:
            consumer = AIOKafkaConsumer(**self.kafka.client_kwargs(), group_id=group, enable_auto_commit=False)
            await consumer.start()
            self.groups[group] = consumer
        consumer = self.groups[group]
        return {tp: await consumer.committed(tp) for tp in tps}

    async def _reader(self) -> AIOKafkaConsumer:
        if self.reader is None:
            self.reader = AIOKafkaConsumer(**self.kafka.client_kwargs(), group_id=None, enable_auto_commit=False,
                                           fetch_max_wait_ms=FETCH_TIMEOUT_MS)
            await self.reader.start()
        return self.reader

    async def close(self) -> None:
        consumers: list[Any] = [self.reader, *self.groups.values()]
        await asyncio.gather(*(c.stop() for c in consumers if c is not None), return_exceptions=True)
        if self.client is not None:
            await self.client.close()
        self.reader, self.client, self.groups, self.assigned = None, None, {}, set()
