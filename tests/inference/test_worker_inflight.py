"""The inference worker scores several Kafka polls at once over the engine loop (their requests share the
engine's steps) and commits offsets in poll order, never past a poll still being scored.

The first test runs a real embedded broker and the real paged engine (tiny model) in its loop thread; the
second checks the commit order on asyncio tasks that finish out of order."""
from __future__ import annotations

import asyncio
import collections
import threading
import time

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from inference.api.loop import looping
from inference.fusion import FusionPolicy
from inference.scorers.engine import EngineScorer
from inference.worker import InferenceWorker, WorkerConfig
from schemas import InferenceRequest, Probs, decode_forecast, encode
from streams.admin import ensure_topics
from streams.producer import make_producer
from streams.settings import KafkaSettings
from streams.topics import Topics

from tests.inference.test_tiers import read_topic

REQUESTS = 12


class CountingScorer:
    """A scorer passing every call through to `inner`, counting how many `score` calls run at once."""

    def __init__(self, inner) -> None:
        self.inner, self.model_name, self.concurrent = inner, inner.model_name, inner.concurrent
        self.running = self.most = 0
        self._lock = threading.Lock()

    def score(self, items):
        with self._lock:
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            return self.inner.score(items)
        finally:
            with self._lock:
                self.running -= 1

    def __getattr__(self, name):
        return getattr(self.inner, name)


def make_request(i: int) -> InferenceRequest:
    now = time.time_ns()
    return InferenceRequest(f"r{i}", f"S{i % 3}", 10**18 + i, 60, "cadence",
                            f"shares moved {i} bps after the report (up, down or flat):", Probs(0.3, 0.3, 0.4),
                            (), None, now, now, now + 600 * 10**9)


async def run_worker(kafka: KafkaSettings, model_dir: str) -> tuple[list, int, int]:
    await ensure_topics(kafka.bootstrap, kafka.topics.all())
    cfg = WorkerConfig(group_id=f"{kafka.topics.prefix}inference", max_batch=1, max_inflight=4, escalate=False)
    with looping(EngineScorer(model_dir)) as shared:
        scorer = CountingScorer(shared)
        worker = InferenceWorker(kafka, None, scorer, cfg, FusionPolicy())
        running = asyncio.create_task(worker.run())
        producer = make_producer(kafka)
        await producer.start()
        try:
            for i in range(REQUESTS):   # one partition: the records stay in order, one per poll
                await producer.send_and_wait(kafka.topics.requests, encode(make_request(i)), partition=0)
        finally:
            await producer.stop()
        forecasts = await read_topic(kafka, kafka.topics.forecasts, REQUESTS, decode_forecast)
        worker.stopping.set()
        await running
    committed = await committed_offset(kafka, cfg.group)
    return forecasts, scorer.most, committed


async def committed_offset(kafka: KafkaSettings, group: str) -> int:
    consumer = AIOKafkaConsumer(**kafka.client_kwargs(), group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        return await consumer.committed(TopicPartition(kafka.topics.requests, 0)) or 0
    finally:
        await consumer.stop()


@pytest.mark.integration
def test_polls_are_scored_at_once_and_every_offset_is_committed_once_answered(kafka_bootstrap, topic_prefix,
                                                                               tiny_model_dir):
    kafka = KafkaSettings(kafka_bootstrap, Topics(topic_prefix, 1))
    forecasts, most_at_once, committed = asyncio.run(run_worker(kafka, str(tiny_model_dir)))
    assert sorted(f.id for f in forecasts) == sorted(f"r{i}" for i in range(REQUESTS))
    assert all(f.status == "ok" for f in forecasts)
    assert most_at_once > 1                 # a later poll was scored while an earlier one still was
    assert committed == REQUESTS            # every answered request's offset, once all were answered


class RecordingConsumer:
    """Records the offsets `commit` is given (the commit-order logic alone, without a broker)."""

    def __init__(self) -> None:
        self.commits: list[dict] = []

    async def commit(self, offsets) -> None:
        self.commits.append(dict(offsets))


def test_offsets_are_committed_in_poll_order_never_past_a_poll_still_scored():
    async def scenario() -> list[dict]:
        tp = TopicPartition("requests", 0)
        gates = [asyncio.Event() for _ in range(3)]
        inflight = collections.deque(
            (asyncio.create_task(gate.wait()), {tp: offset}) for gate, offset in zip(gates, (1, 2, 3)))
        consumer = RecordingConsumer()
        gates[1].set()                                   # the second poll finishes first
        await asyncio.sleep(0)
        await InferenceWorker._commit_done(consumer, inflight, room=3)
        assert consumer.commits == [] and len(inflight) == 3     # the first still runs: nothing committed
        gates[0].set()
        await asyncio.sleep(0)
        await InferenceWorker._commit_done(consumer, inflight, room=3)
        assert len(inflight) == 1                        # the first two committed together, at the second's end
        waiting = asyncio.create_task(InferenceWorker._commit_done(consumer, inflight, room=0))
        await asyncio.sleep(0.01)
        assert not waiting.done()                        # room 0 (shutting down): waits for the last one
        gates[2].set()
        await waiting
        return consumer.commits

    commits = asyncio.run(scenario())
    assert commits == [{TopicPartition("requests", 0): 2}, {TopicPartition("requests", 0): 3}]
