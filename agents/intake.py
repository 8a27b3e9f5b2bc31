"""The agents' Kafka intake: one consumer group over `news`, `ticks` and `symbol-news`, in batches.

Faust hands an agent one event at a time, and its per-event machinery (conductor, channel queue,
stream iterator, acking) cost several times the agents' own work per record (py-spy, bench/RESULTS.md
"Agents"). The intake reads with a plain aiokafka consumer instead, inside the Faust app (a service
it starts and stops): each `getmany` batch goes to `handle`, which returns once every output of the
batch is acknowledged by the broker, and only then are the batch's offsets committed. A crash at any
point replays the uncommitted batch: at least once, as before.

The range assignor gives a worker the same partition numbers of every topic, so a symbol's ticks and
its `symbol-news` records (both keyed by symbol, topics of one partition count) meet in one worker.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.errors import CommitFailedError, KafkaError
from mode import Service

from streams.settings import KafkaSettings

log = logging.getLogger("finllm.agents.intake")
FETCH_MAX_WAIT_MS = 20       # Tansu does not answer a fetch early when data arrives: this bounds a hop
MAX_BATCH_RECORDS = 2000     # about 100 ms of work at most: timers (trigger release, checkpoints) run between batches
STOP_TIMEOUT_S = 10.0

Batch = dict[TopicPartition, list[Any]]


class Intake(Service):
    """Consumes `topics` in group `group_id`; `handle(batch)` processes a batch and awaits its outputs (it
    may return {partition: offset} for partitions it left early: those are committed and read again from
    there); `on_assigned(partitions by topic)` runs after each rebalance; the (topic, partition)s
    `hold_back()` names after a batch are paused until it no longer names them."""

    def __init__(self, kafka: KafkaSettings, group_id: str, topics: list[str], handle: Callable[[Batch], Awaitable[dict | None]],
                 on_assigned: Callable[[dict[str, list[int]]], None], *, session_timeout_s: float,
                 rebalance_timeout_s: float, hold_back: Callable[[], set[tuple[str, int]]] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.kafka, self.group_id, self.topics = kafka, group_id, topics
        self.handle, self.on_assigned, self.hold_back = handle, on_assigned, hold_back
        self.session_timeout_ms, self.rebalance_timeout_ms = int(session_timeout_s * 1e3), int(rebalance_timeout_s * 1e3)
        self.consumer: AIOKafkaConsumer | None = None
        self.stopping = asyncio.Event()
        self.loop_done = asyncio.Event()
        self.idle = asyncio.Event()          # no batch between getmany and its commit
        self.idle.set()

    async def on_start(self) -> None:
        self.consumer = AIOKafkaConsumer(
            **self.kafka.client_kwargs(), group_id=self.group_id, enable_auto_commit=False,
            auto_offset_reset="earliest", partition_assignment_strategy=(RangePartitionAssignor,),
            session_timeout_ms=self.session_timeout_ms, rebalance_timeout_ms=self.rebalance_timeout_ms,
            heartbeat_interval_ms=1_000, fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
            max_partition_fetch_bytes=4 * 1024 * 1024)
        self.consumer.subscribe(self.topics, listener=_Rebalance(self.on_assigned, self.idle))
        await self.consumer.start()
        self.add_future(self._run())

    async def on_stop(self) -> None:
        """Finish the batch in hand (its outputs and commit), then leave the group."""
        self.stopping.set()
        try:
            await asyncio.wait_for(self.loop_done.wait(), STOP_TIMEOUT_S)
        except asyncio.TimeoutError:
            log.warning("intake did not finish its batch in %.0f s: it will be replayed", STOP_TIMEOUT_S)
        if self.consumer is not None:
            await self.consumer.stop()

    async def _run(self) -> None:
        try:
            while not self.stopping.is_set():
                batch = await self.consumer.getmany(timeout_ms=FETCH_MAX_WAIT_MS, max_records=MAX_BATCH_RECORDS)
                await asyncio.sleep(0)   # let the fetcher ask for the next records while this batch is handled
                if batch:
                    self.idle.clear()
                    try:
                        stopped = await self.handle(batch) or {}
                        await self._commit(batch, stopped)
                        for tp, offset in stopped.items():     # read again from there once resumed
                            self.consumer.seek(tp, offset)
                    finally:
                        self.idle.set()
                self._align()
        finally:
            self.loop_done.set()

    def _align(self) -> None:
        """Pause the partitions `hold_back` names (and only those): their records wait in Kafka."""
        if self.hold_back is None:
            return
        assigned = self.consumer.assignment()
        wanted, paused = {TopicPartition(*tp) for tp in self.hold_back()} & assigned, self.consumer.paused()
        if wanted - paused:
            log.debug("pausing %s: ahead of the news stream", sorted(str(tp) for tp in wanted - paused))
            self.consumer.pause(*(wanted - paused))
        if paused - wanted:
            self.consumer.resume(*((paused - wanted) & assigned))

    async def _commit(self, batch: Batch, stopped: dict[TopicPartition, int]) -> None:
        """Offsets after the batch (or where `handle` stopped a partition); a rebalance in between makes
        the commit fail, and the partition's next owner replays the batch (at least once)."""
        try:
            await self.consumer.commit({tp: stopped.get(tp, records[-1].offset + 1) for tp, records in batch.items()})
        except (CommitFailedError, KafkaError) as error:
            log.warning("commit after a batch failed (%s): its records will be processed again", error)


class _Rebalance(ConsumerRebalanceListener):
    """Partitions are given up only after the batch in hand is processed and committed (fewer replays)."""

    def __init__(self, on_assigned: Callable[[dict[str, list[int]]], None], idle: asyncio.Event) -> None:
        self.on_assigned, self.idle = on_assigned, idle

    async def on_partitions_revoked(self, revoked: Any) -> None:
        try:
            await asyncio.wait_for(self.idle.wait(), STOP_TIMEOUT_S)
        except asyncio.TimeoutError:
            log.warning("a batch still in hand at a rebalance: it will be replayed")

    async def on_partitions_assigned(self, assigned: Any) -> None:
        by_topic: dict[str, list[int]] = {}
        for tp in assigned:
            by_topic.setdefault(tp.topic, []).append(tp.partition)
        self.on_assigned({topic: sorted(parts) for topic, parts in by_topic.items()})
