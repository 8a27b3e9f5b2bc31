"""The `finllm` stack and tape commands, run as a user would (subprocess, real broker and Redis)."""
import asyncio
import os
import subprocess
import sys

import orjson
import pytest
from aiokafka import AIOKafkaConsumer

from schemas import Forecast, Latency, NewsWatermark, Probs, decode_news_event, decode_tick
from inference.adapters.shipped import shipped_routing
from streams.admin import ensure_topics
from streams.latest import LatestStore
from streams.topics import Topics

FINLLM = [sys.executable, "-m", "agents.cli"]


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



def test_the_command_line_starts_without_heavy_imports():
    """Every command module is imported by the group: what a command runs on is imported inside it."""
    code = ("import sys, agents.cli; print(sorted(m for m in ('torch', 'transformers', 'polars', 'numpy', "
            "'aiokafka', 'faust', 'redis', 'agents.lab.demo', 'inference') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr[-2000:]
    assert "--bootstrap" in finllm("status", "--help") and "demo" in finllm("--help")

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


def _started(*args, env=None):
    return subprocess.Popen(FINLLM + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, **(env or {})))


@pytest.mark.integration
def test_up_serves_kafka_and_redis_until_interrupted(tmp_path):
    import signal

    import redis

    from streams.ports import port_is_free

    proc = _started("up", "--workdir", str(tmp_path))
    try:
        routing = shipped_routing("tiny").env()
        lines = dict(proc.stdout.readline().strip().split("=", 1) for _ in range(3 + len(routing)))
        bootstrap, url = lines["FINLLM_KAFKA_BOOTSTRAP"], lines["FINLLM_REDIS_URL"]
        # the model and its shipped adapters' settings, as the demo gives its workers: hand-started workers
        # serve them too (FINLLM_MODEL=tiny in the tests' environment)
        assert lines["FINLLM_MODEL"] == "tiny"
        assert {k: lines[k].strip("'") for k in routing} == routing
        assert redis.Redis.from_url(url).ping()
        assert asyncio.run(_topic_names(bootstrap)) >= set(Topics().all())
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
    ports = [int(bootstrap.rsplit(":", 1)[1]), int(url.rsplit(":", 1)[1].split("/")[0])]
    assert all(port_is_free(p) for p in ports)


async def _topic_names(bootstrap):
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


@pytest.mark.integration
def test_tail_prints_forecasts_as_json_lines(kafka_bootstrap, topic_prefix):
    from schemas import encode
    from streams.producer import make_producer
    from streams.settings import KafkaSettings

    settings = KafkaSettings(kafka_bootstrap, Topics(topic_prefix, 1))
    asyncio.run(ensure_topics(kafka_bootstrap, settings.topics.all()))
    probs = Probs(0.2, 0.3, 0.5)
    sent = [Forecast(f"f{i}", sym, 1_800_000_000_000_000_000 + i, 60, *probs.as_tuple(), "flat", "cadence", "ok",
                     probs, probs, (), "m", None, Latency(1, 2, 3), 1) for i, sym in enumerate(["ACME", "BOLT", "ACME"])]

    async def publish():
        producer = make_producer(settings)
        await producer.start()
        for forecast in sent + sent[:1]:  # a duplicate on the wire is printed once
            await producer.send_and_wait(settings.topics.forecasts, encode(forecast), key=forecast.symbol.encode())
        await producer.stop()

    asyncio.run(publish())
    proc = _started("tail", "forecasts", "--symbol", "ACME", "--from-beginning",
                    env={"FINLLM_KAFKA_BOOTSTRAP": kafka_bootstrap, "FINLLM_TOPIC_PREFIX": topic_prefix})
    try:
        got = [orjson.loads(proc.stdout.readline())["id"] for _ in range(2)]
    finally:
        proc.terminate()
        proc.wait(20)
    assert got == ["f0", "f2"]
