"""Against the real embedded Kafka and Redis: heartbeats, consumer lag, replay metrics, `finllm status`."""
from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from click.testing import CliRunner

from streams.admin import ensure_topics
from agents.cli import cli
from streams.heartbeat import Heartbeat, read_health
from streams.lag import LagProbe
from streams.metrics import ReplayMetrics
from streams.replay import replay
from streams.settings import KafkaSettings
from streams.synth import synth_tape
from streams.topics import Topics

pytestmark = pytest.mark.integration
NS = 1_000_000_000


@pytest.fixture
def kafka(kafka_bootstrap: str, topic_prefix: str) -> KafkaSettings:
    settings = KafkaSettings(kafka_bootstrap, Topics(topic_prefix, 2))
    asyncio.run(ensure_topics(kafka_bootstrap, settings.topics.all()))
    return settings


def test_heartbeat_is_read_back_with_rates_and_expires(redis_url: str, topic_prefix: str) -> None:
    async def run() -> tuple:
        client = aioredis.from_url(redis_url)
        beat = Heartbeat(aioredis.from_url(redis_url), "agents", 9100, topic_prefix)
        await beat.beat({"events_in_total": 10})
        await asyncio.sleep(0.2)
        await beat.beat({"events_in_total": 30})
        records, ttl_s = await read_health(client, topic_prefix), await client.ttl(beat.key)
        await beat.close()
        after = await read_health(client, topic_prefix)
        await client.aclose()
        return records, ttl_s, after

    records, ttl_s, after = asyncio.run(run())
    assert [(r.service, r.metrics_port) for r in records] == [("agents", 9100)]
    assert 20 / 0.5 < records[0].figures["events_in_per_s"] < 20 / 0.2 + 1
    assert 0 < ttl_s <= 15 and after == []


def test_lag_in_records_and_event_seconds(kafka: KafkaSettings, topic_prefix: str) -> None:
    topic, group = kafka.topics.ticks, f"{topic_prefix}group"

    async def run() -> list:
        producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap)
        await producer.start()
        for i in range(20):  # partition 0 gets ts 0, 2, ..., 18 s (offsets 0..9)
            await producer.send_and_wait(topic, b'{"ts_ns": %d}' % (i * NS), partition=i % 2)
        await producer.stop()
        consumer = AIOKafkaConsumer(bootstrap_servers=kafka.bootstrap, group_id=group, enable_auto_commit=False)
        await consumer.start()
        consumer.assign([TopicPartition(topic, 0), TopicPartition(topic, 1)])
        await consumer.commit({TopicPartition(topic, 0): 4, TopicPartition(topic, 1): 10})
        await consumer.stop()
        probe = LagProbe(kafka)
        try:
            return await probe.lag(group, [topic, f"{topic_prefix}missing"])
        finally:
            await probe.close()

    lags = asyncio.run(run())
    assert [(l.partition, l.committed, l.high_watermark, l.messages) for l in lags] == [(0, 4, 10, 6), (1, 10, 10, 0)]
    assert lags[0].event_s == pytest.approx(18 - 8) and lags[1].event_s == 0


def test_replay_counts_what_it_sends(kafka: KafkaSettings) -> None:
    tape = synth_tape(symbols=1, minutes=1, seed=3)
    metrics = ReplayMetrics()
    stats = asyncio.run(replay(tape, kafka, metrics=metrics, progress=False))
    assert metrics.figures()["events_sent_total"] == stats.events > 0
    assert metrics.figures()["lag_s"] == 0


def test_status_exits_0_and_shows_the_stack(kafka: KafkaSettings, redis_url: str, topic_prefix: str) -> None:
    async def beat() -> Heartbeat:
        heartbeat = Heartbeat(aioredis.from_url(redis_url), "inference", 9101, topic_prefix)
        await heartbeat.beat({"forecasts_total": 3, "e2e_s_p50": 0.012, "adapters_registered": ["alpha"],
                              "groups": {"finllm-inference": [kafka.topics.requests]}})
        await heartbeat.client.aclose()
        return heartbeat

    heartbeat = asyncio.run(beat())
    env = {"FINLLM_TOPIC_PREFIX": topic_prefix}
    result = CliRunner().invoke(cli, ["status", "--bootstrap", kafka.bootstrap, "--redis", redis_url], env=env)
    assert result.exit_code == 0, result.output
    assert f"inference  up    {heartbeat.instance} metrics :9101" in result.output
    assert f"{kafka.topics.requests}" in result.output and "finllm-inference" in result.output
    assert "p50 12 ms" in result.output and "registered alpha" in result.output
    down = CliRunner().invoke(cli, ["status", "--bootstrap", kafka.bootstrap, "--redis", "redis://127.0.0.1:1/0"],
                              env=env)
    assert down.exit_code == 1 and "redis      DOWN" in down.output
