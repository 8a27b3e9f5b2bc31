"""Watermark alignment: an agents worker started on a backlog (a fast replay already in Kafka, or a worker
catching up after downtime) reads ticks far ahead of the news that precedes them in event time, because
news reaches a symbol through one more hop (`news` -> `symbol-news`). Without alignment that news arrives
over `allowed_lateness_s` behind the symbol's ticks and is dead-lettered as late, and its forecasts never
come. The intake pauses a partition's ticks while they run ahead of its oldest trigger waiting for news."""
import asyncio
import os
import time

import orjson
import pytest
from aiokafka import AIOKafkaConsumer

from agents.config import AgentsConfig
from agents.offline import fired_triggers
from agents.processor import Processor
from schemas import NewsItem, Trade
from streams.admin import ensure_topics
from streams.processes import WorkerProcess
from streams.replay import replay
from streams.settings import KafkaSettings
from streams.synth import synth_tape
from streams.topics import Topics

S = 1_000_000_000
T0 = 1_767_623_400 * S


def test_partitions_ahead_names_a_partition_whose_ticks_outrun_its_oldest_waiting_trigger():
    p = Processor(AgentsConfig(cadence_s=60, news_grace_ms=0, news_idle_ms=10**9))
    p.on_news_watermark(T0, 0, 0, partition=1)
    for ts_s in (1, 61, 130):                              # cadence triggers at T0+60 and T0+120 wait for news
        p.on_tick(Trade("ACME", T0 + ts_s * S, 100.0, 1.0), 0, partition=1)
    p.on_tick(Trade("BOLT", T0 + 5 * S, 100.0, 1.0), 0, partition=2)
    assert p.partitions_ahead(60 * S, 0) == {1} and p.ahead("ACME", 60 * S, 0) and not p.ahead("BOLT", 0, 0)
    assert p.partitions_ahead(80 * S, 0) == set()
    p.on_news(NewsItem("n1", T0 + 100 * S, "wire", "ACME wins", ("ACME",)), "ACME", 0, partition=1)
    p.on_news_watermark(T0 + 90 * S, 0, 0, partition=1)    # the news stream catches up to 90 s: 60 s fires
    assert p.partitions_ahead(25 * S, 0) == {1} and p.partitions_ahead(30 * S, 0) == set()   # 100 s waits now
    p.on_news_watermark(T0 + 125 * S, 0, 0, partition=1)   # past every waiting trigger
    assert p.partitions_ahead(0, 0) == set() and not p.ahead("ACME", 0, 0)


@pytest.mark.integration
def test_worker_started_on_a_backlog_loses_no_news_to_lateness(kafka_bootstrap, topic_prefix, tmp_workdir):
    env = dict(os.environ, FINLLM_ALLOWED_LATENESS_S="60")
    tape = synth_tape(4, 12, seed=3)
    expected = {f.id for f in fired_triggers(tape.events(), AgentsConfig.from_env(env))}
    kafka = KafkaSettings(kafka_bootstrap, Topics(topic_prefix, 4))
    requests, late = asyncio.run(_drain_backlog(tape, kafka, dict(env, **kafka.env()), tmp_workdir, expected))
    assert late == 0 and requests == expected


async def _drain_backlog(tape, kafka, env, workdir, expected) -> tuple[set[str], int]:
    await ensure_topics(kafka.bootstrap, kafka.topics.all())
    await replay(tape, kafka, bundle_ms=1000, progress=False)      # the whole tape waits in Kafka first
    consumer = AIOKafkaConsumer(kafka.topics.requests, kafka.topics.deadletter, bootstrap_servers=kafka.bootstrap,
                                group_id=None, auto_offset_reset="earliest")
    await consumer.start()
    agents = WorkerProcess("agents", "agents.worker", env, workdir)
    requests, late = set(), 0
    try:
        await asyncio.to_thread(agents.wait_ready, 120)
        started = time.monotonic()
        while requests != expected and time.monotonic() - started < 90:
            for tp, records in (await consumer.getmany(timeout_ms=200)).items():
                for record in records:
                    value = orjson.loads(record.value)
                    if tp.topic == kafka.topics.deadletter:
                        late += value.get("reason") == "late"
                    elif value.get("kind") != "warmup":
                        requests.add(value["id"])
    finally:
        agents.stop()
        await consumer.stop()
    return requests, late
