"""The `finllm` commands of the streams layer, run as a user would (subprocess, real broker and Redis)."""
import asyncio
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaConsumer

from schemas import Forecast, Latency, NewsWatermark, Probs, decode_news_event, decode_tick
from streams.admin import ensure_topics
from streams.latest import LatestStore
from streams.topics import Topics

FINLLM = [sys.executable, "-c", "from streams.cli import main; main()"]


def finllm(*args, env=None, timeout=120):
    done = subprocess.run(FINLLM + list(args), capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, **(env or {})))
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_tape_synth_same_seed_same_bytes(tmp_path):
    finllm("tape", "synth", "--out", str(tmp_path / "a"), "--symbols", "3", "--minutes", "4", "--seed", "5")
    finllm("tape", "synth", "--out", str(tmp_path / "b"), "--symbols", "3", "--minutes", "4", "--seed", "5")
    for name in ("ticks.parquet", "news.parquet"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


@pytest.mark.integration
def test_replay_max_publishes_every_event_in_order(tmp_path, kafka_bootstrap, topic_prefix):
    tape = tmp_path / "tape"
    finllm("tape", "synth", "--out", str(tape), "--symbols", "2", "--minutes", "3", "--seed", "1")
    topics = Topics(topic_prefix, 2)
    asyncio.run(ensure_topics(kafka_bootstrap, topics.all()))
    out = finllm("replay", str(tape), "--max", env={"FINLLM_KAFKA_BOOTSTRAP": kafka_bootstrap,
                                                    "FINLLM_TOPIC_PREFIX": topic_prefix, "FINLLM_PARTITIONS": "2"})
    stats = orjson.loads(out.strip().splitlines()[-1])
    ticks, news = asyncio.run(_read_all(kafka_bootstrap, topics, stats["ticks"] + stats["news"]))
    assert len(ticks) == stats["ticks"] > 100 and len(news) == stats["news"]
    for symbol in {t.symbol for t in ticks}:
        times = [t.ts_ns for t in ticks if t.symbol == symbol]
        assert times == sorted(times)  # each symbol's ticks stay in event-time order (one partition)


async def _read_all(bootstrap, topics, expected):
    consumer = AIOKafkaConsumer(topics.ticks, topics.news, bootstrap_servers=bootstrap, group_id=None,
                                auto_offset_reset="earliest")
    await consumer.start()
    ticks, news = [], []
    try:
        for _ in range(200):
            batch = await consumer.getmany(timeout_ms=200)
            for record in (r for part in batch.values() for r in part):
                if record.topic == topics.ticks:
                    ticks.append(decode_tick(record.value))
                elif not isinstance(item := decode_news_event(record.value), NewsWatermark):
                    news.append(item)
            if len(ticks) + len(news) >= expected:
                break
    finally:
        await consumer.stop()
    return sorted(ticks, key=lambda t: t.ts_ns), news


@pytest.mark.integration
def test_latest_reads_the_newest_forecast_from_redis(redis_url, topic_prefix):
    probs = Probs(0.5, 0.3, 0.2)

    def forecast(ts_ns, fid):
        return Forecast(fid, "ACME", ts_ns, 60, *probs.as_tuple(), "up", "cadence", "ok", probs, None, (), "m", None,
                        Latency(1, 2, 3), 1)

    async def store():
        latest = LatestStore.from_url(redis_url, topic_prefix)
        assert await latest.store(forecast(2_000_000_000_000_000_000, "new"))
        assert not await latest.store(forecast(1_900_000_000_000_000_000, "old"))  # older: kept out
        await latest.close()

    asyncio.run(store())
    out = finllm("latest", "ACME", env={"FINLLM_REDIS_URL": redis_url, "FINLLM_TOPIC_PREFIX": topic_prefix})
    assert orjson.loads(out)["id"] == "new"
    done = subprocess.run(FINLLM + ["latest", "NOPE"], capture_output=True, text=True,
                          env=dict(os.environ, FINLLM_REDIS_URL=redis_url))
    assert done.returncode != 0 and "no forecast for NOPE" in done.stderr
