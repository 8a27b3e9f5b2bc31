"""Two inference workers in one consumer group split the requests, each adapter staying on one worker.

Requests are keyed by adapter name (as the agents send them), so all of an adapter's requests land on
one partition and hence on the one worker that owns it: its adapter stays hot there. Real embedded
broker, real paged engine on the tiny model, two workers in this process.
"""
from __future__ import annotations

import asyncio
import collections
import itertools
import time

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.partitioner import murmur2

from inference.scorers.engine import EngineScorer
from inference.fusion import FusionPolicy
from inference.worker import InferenceWorker, WorkerConfig
from schemas import InferenceRequest, Probs, decode_forecast, encode
from streams.admin import ensure_topics
from streams.producer import make_producer
from streams.settings import KafkaSettings
from streams.topics import Topics

PARTITIONS = 4
REQUESTS_PER_ADAPTER = 10
TIMEOUT_S = 60.0


def adapter_names(count: int = PARTITIONS) -> list[str]:
    """Names whose keys land on distinct partitions (the producer's murmur2 partitioner), so any
    split of the partitions between the two workers gives each of them work."""
    names: dict[int, str] = {}
    for i in itertools.count():
        name = f"lora-{i}"
        names.setdefault((murmur2(name.encode()) & 0x7FFFFFFF) % PARTITIONS, name)
        if len(names) == count:
            return [names[p] for p in sorted(names)]


def make_request(i: int, adapter: str) -> InferenceRequest:
    now_ns = time.time_ns()
    return InferenceRequest(id=f"req-{i}", symbol="ACME", ts_ns=10**18 + i, horizon_s=60, trigger="cadence",
                            prompt=f"stock price rose {i} bps on earnings (up, down or flat):",
                            numeric=Probs(0.3, 0.3, 0.4), news_ids=(), adapter=adapter, ingest_wall_ns=now_ns,
                            created_wall_ns=now_ns, deadline_wall_ns=now_ns + 600 * 10**9)


async def wait_for_group(bootstrap: str, group_id: str, members: int) -> None:
    """Until the group is stable with `members` members, i.e. the partitions are split between them."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while time.monotonic() < deadline:
            response = await admin.describe_consumer_groups([group_id])
            group = response[0].groups[0]
            if group[2] == "Stable" and len(group[5]) == members:     # (error, id, state, ..., members)
                return
            await asyncio.sleep(0.2)
        raise TimeoutError(f"group {group_id} never had {members} stable members")
    finally:
        await admin.close()


async def read_forecasts(kafka: KafkaSettings, expected: int) -> list:
    """Every forecast record on the topic (duplicates included) once `expected` distinct ids arrived."""
    consumer = AIOKafkaConsumer(kafka.topics.forecasts, **kafka.client_kwargs(), auto_offset_reset="earliest",
                                enable_auto_commit=False)
    await consumer.start()
    forecasts, deadline = [], time.monotonic() + TIMEOUT_S
    try:
        while len({f.id for f in forecasts}) < expected and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            forecasts += [decode_forecast(r.value) for part in batch.values() for r in part]
        batch = await consumer.getmany(timeout_ms=500)          # anything published twice shows up here
        forecasts += [decode_forecast(r.value) for part in batch.values() for r in part]
    finally:
        await consumer.stop()
    return forecasts


@pytest.fixture
def scorers(tiny_model_dir, lora_dirs):
    paths = itertools.cycle(str(p) for p in lora_dirs.values())
    adapters = {name: next(paths) for name in adapter_names()}
    pair = [EngineScorer(str(tiny_model_dir), adapters=adapters) for _ in range(2)]
    yield pair
    for scorer in pair:
        scorer.close()


async def run_scaleout(kafka: KafkaSettings, scorers: list[EngineScorer], group_id: str) -> tuple[list, list]:
    await ensure_topics(kafka.bootstrap, kafka.topics.all())
    cfg = WorkerConfig(group_id=group_id, max_batch=8, session_timeout_ms=6_000)
    workers = [InferenceWorker(kafka, None, scorer, cfg, FusionPolicy()) for scorer in scorers]
    tasks = [asyncio.create_task(worker.run()) for worker in workers]
    try:
        await wait_for_group(kafka.bootstrap, group_id, members=2)
        producer = make_producer(kafka)
        await producer.start()
        names = adapter_names()
        for i in range(REQUESTS_PER_ADAPTER * len(names)):
            request = make_request(i, names[i % len(names)])
            await producer.send(kafka.topics.requests, encode(request), key=request.adapter.encode())
        await producer.stop()
        forecasts = await read_forecasts(kafka, REQUESTS_PER_ADAPTER * len(names))
    finally:
        for worker in workers:
            worker.stopping.set()
        await asyncio.gather(*tasks)
    return workers, forecasts


def test_two_workers_split_requests_with_adapter_affinity(kafka_bootstrap, topic_prefix, scorers):
    kafka = KafkaSettings(kafka_bootstrap, Topics(topic_prefix, PARTITIONS))
    workers, forecasts = asyncio.run(run_scaleout(kafka, scorers, f"{topic_prefix}inference"))
    names = adapter_names()

    per_id = collections.Counter(f.id for f in forecasts)
    assert set(per_id) == {f"req-{i}" for i in range(REQUESTS_PER_ADAPTER * len(names))}
    assert set(per_id.values()) == {1}, "a request was answered twice"
    assert {f.status for f in forecasts} == {"ok"}
    assert all(f.adapter == names[int(f.id.removeprefix("req-")) % len(names)] for f in forecasts)

    served = [set(scorer.engine.slots.resident) for scorer in scorers]     # adapters each engine loaded
    assert all(served), f"a worker got no work: {served}"
    assert served[0].isdisjoint(served[1]) and served[0] | served[1] == set(names), served
    for worker, scorer, adapters in zip(workers, scorers, served):
        assert scorer.metrics()["adapter_loads"] == len(adapters)           # each loaded once, kept hot
        assert worker.forecasts_published == REQUESTS_PER_ADAPTER * len(adapters)
