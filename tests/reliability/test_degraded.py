"""Bad input at every decoder and Redis down for a while, during one replay.

Proves: every malformed record (ticks, news, symbol-news, inference-requests) reaches `deadletter`
once, with a reason; the good records around them yield exactly the undisturbed forecasts; with
Redis stopped for REDIS_DOWN_S the pipeline keeps forecasting (the latest view and the agents'
checkpoints degrade, with a log line and `finllm_redis_errors`), and Redis-backed state catches
up once it is back (the latest forecast of every symbol is in Redis at the end).
"""
from __future__ import annotations

import asyncio
import time
from collections import Counter

import orjson
import pytest

from agents.offline import rejected_news
from streams.chaos import malformed_records
from streams.consumer import ForecastCollector
from streams.latest import LatestStore
from streams.producer import make_producer
from streams.replay import replay
from streams.synth import START_NS
from tests.reliability.pipeline import Pipeline, Services, same

pytestmark = [pytest.mark.reliability, pytest.mark.integration]
SPEED = 30.0
REDIS_DOWN_S = 6.0
DAY_NS = 86_400 * 10**9


def bad_records(symbols: list[str]) -> list[tuple[str, bytes, str | None]]:
    """(topic kind, bytes, expected reason or None for any): a bit of everything a feed gets wrong."""
    sym = symbols[0]
    tick = {"symbol": sym, "ts_ns": START_NS + 60 * 10**9, "price": 10.0, "size": 1.0}
    news = {"id": "bad-news", "ts_ns": START_NS, "source": "wire", "headline": "x", "symbols": [sym]}
    return [(kind, raw, reason) for kind, raw, reason in malformed_records(13)] + [
        ("tick", orjson.dumps(tick | {"ts_ns": 4_000_000_000 * 10**9}), "ts_in_future"),
        ("tick", orjson.dumps(tick | {"ts_ns": START_NS - DAY_NS}), "late"),
        ("tick", orjson.dumps(tick | {"price": 1e300}), "price_out_of_range"),
        ("tick", orjson.dumps(tick | {"size": 1e300}), "size_out_of_range"),
        ("tick", b'{"symbol":"X","ts_ns":1767623400000000000,"price":NaN,"size":1}', "invalid_json"),
        ("tick", bytes(range(256)) * 400, "invalid_utf8"),
        ("tick", orjson.dumps(tick | {"size": "1"}), "bad_type"),
        ("news", orjson.dumps(news | {"ts_ns": 4_000_000_000 * 10**9}), "ts_in_future"),
        ("news", orjson.dumps({"kind": "watermark", "source": "x", "ts_ns": START_NS, "origin": -1}), "bad_type"),
        ("news", orjson.dumps(news | {"id": ""}), "bad_identifier"),
        ("symbol-news", b"\x00garbage", "invalid_json"),
        ("requests", b"{}", "missing_field"),
        ("requests", orjson.dumps({"id": "r", "symbol": sym, "ts_ns": START_NS, "horizon_s": 60,
                                   "trigger": "cadence", "prompt": "p", "numeric": {"p_up": 2, "p_down": 0,
                                   "p_flat": 0}, "news_ids": [], "adapter": None, "ingest_wall_ns": 1,
                                   "created_wall_ns": 1, "deadline_wall_ns": 1}), "bad_probability"),
        ("requests", b"\xff" * 10, "invalid_utf8"),
    ]


async def inject(pipeline: Pipeline, records: list, key: bytes) -> None:
    topics = pipeline.kafka.topics
    topic = {"tick": topics.ticks, "news": topics.news, "symbol-news": topics.symbol_news,
             "requests": topics.requests}
    producer = make_producer(pipeline.kafka)
    await producer.start()
    try:
        for kind, raw, _ in records:
            await producer.send(topic[kind], raw, key=key)
        await producer.flush()
    finally:
        await producer.stop()


async def redis_outage(services: Services) -> None:
    await asyncio.to_thread(services.redis.stop)
    await asyncio.sleep(REDIS_DOWN_S)
    services.redis.start()   # from this long-lived thread: the child gets SIGTERM when its forking thread exits


async def run_degraded(tape, services: Services, pipeline: Pipeline, ids: set[str], records: list) -> ForecastCollector:
    async with pipeline.running() as collector:
        replaying = asyncio.create_task(replay(tape, pipeline.kafka, speed=SPEED, progress=False))
        await asyncio.sleep(3.0)                       # the symbols have ticks: an old tick is now late
        await inject(pipeline, records, key=tape.symbols[0].encode())
        await redis_outage(services)
        await replaying
        assert await collector.wait_for(ids, 90.0)
        deadline = time.monotonic() + 30.0
        dead = len(records) + sum(rejected_news(tape.events()).values())
        while len(collector.deadletters) < dead and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)
    return collector


async def latest_ts(redis_url: str, prefix: str, symbols: list[str]) -> dict[str, int]:
    store = LatestStore.from_url(redis_url, prefix)
    try:
        return {s: (await store.read(s) or {}).get("ts_ns") for s in symbols}
    finally:
        await store.close()


def test_bad_input_and_redis_outage_change_no_forecast(tape, expected, tmp_path):
    records = bad_records(list(tape.symbols))
    services = Services(tmp_path).start()
    try:
        pipeline = Pipeline(services, tmp_path)
        collector = asyncio.run(run_degraded(tape, services, pipeline, set(expected), records))
        latest = asyncio.run(latest_ts(services.redis_url, pipeline.kafka.topics.prefix, list(tape.symbols)))
    finally:
        services.stop()
    got = collector.by_id
    assert set(got) == set(expected)
    assert all(same(f, expected[f.id]) for _, f in collector.copies)
    # one dead letter per bad record, with the record's bytes (a bad tick inside a bundle is sent alone),
    # and one per news item of the tape the screen rejects (duplicate headlines), Redis outage or not
    assert len(collector.deadletters) == len(records) + sum(rejected_news(tape.events()).values())
    whole = [(raw, reason) for _, raw, reason in records if b'"bundle"' not in raw]
    assert Counter(d.value for d in collector.deadletters) >= Counter(raw for raw, _ in whole)
    reasons = {d.value: d.reason for d in collector.deadletters}
    assert all(d.reason for d in collector.deadletters)
    assert all(reasons[raw] == reason for raw, reason in whole if reason), \
        {raw[:40]: (reasons[raw], reason) for raw, reason in whole if reasons[raw] != reason}
    newest = {}
    for forecast in got.values():
        newest[forecast.symbol] = max(newest.get(forecast.symbol, 0), forecast.ts_ns)
    assert latest == newest, "the latest view caught up after Redis came back"
    inference_log = pipeline.workers["inference"].log_path.read_text()
    assert "could not store latest forecasts in Redis" in inference_log
    print(f"\ndegraded run: {len(records)} bad records dead-lettered by reason "
          f"{dict(Counter(d.reason for d in collector.deadletters))}; Redis down {REDIS_DOWN_S:.0f} s, "
          f"{len(got)} forecasts as undisturbed")
