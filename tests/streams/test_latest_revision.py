"""Consumers keep the latest revision of each forecast id: Redis's latest view, the forecast iterator and
the supervisors' collector, against a real Redis and broker."""
import asyncio

import pytest

from schemas import Forecast, Latency, Probs, encode
from streams.admin import ensure_topics
from streams.consumer import ForecastCollector, iter_forecasts
from streams.latest import LatestStore
from streams.producer import make_producer
from streams.settings import KafkaSettings
from streams.topics import Topics

pytestmark = pytest.mark.integration
TS = 2_000_000_000_000_000_000
BASE, DEEP = Probs(0.5, 0.3, 0.2), Probs(0.2, 0.6, 0.2)


def forecast(fid: str, ts_ns: int = TS, revision: int = 0) -> Forecast:
    probs, tier = (BASE, "base") if revision == 0 else (DEEP, "deep")
    return Forecast(fid, "ACME", ts_ns, 60, *probs.as_tuple(), probs.direction, "cadence", "ok", BASE, probs, (),
                    "m", None, Latency(1, 2, 3), 1, tier=tier, revision=revision, escalated=revision == 0)


def test_redis_keeps_the_deep_revision_over_the_base_answer_and_its_late_copy(redis_url, topic_prefix):
    async def run():
        store = LatestStore.from_url(redis_url, topic_prefix)
        try:
            assert await store.store(forecast("a"))
            assert await store.store(forecast("a", revision=1))
            assert not await store.store(forecast("a"))                  # the base copy redelivered late
            kept = await store.read("ACME")
            assert (kept["id"], kept["tier"], kept["revision"]) == ("a", "deep", 1)
            assert await store.store(forecast("b", TS + 60 * 10**9))     # the next trigger's base answer
            assert not await store.store(forecast("a", revision=1))      # an older forecast's revision
            return await store.read("ACME")
        finally:
            await store.close()

    assert asyncio.run(run())["id"] == "b"


def test_readers_of_the_topic_keep_the_latest_revision_per_id(kafka_bootstrap, topic_prefix):
    kafka = KafkaSettings(kafka_bootstrap, Topics(topic_prefix, 1))
    sent = [forecast("a"), forecast("b"), forecast("a", revision=1), forecast("a"), forecast("b")]

    async def run():
        await ensure_topics(kafka_bootstrap, kafka.topics.all())
        producer = make_producer(kafka)
        await producer.start()
        for f in sent:
            await producer.send_and_wait(kafka.topics.forecasts, encode(f), key=b"ACME")
        await producer.stop()
        collector = ForecastCollector(kafka, expected={"a", "b"})
        collecting = asyncio.create_task(collector.run())
        assert await collector.wait_for({"a", "b"}, 30) and len(await _copies(collector, len(sent))) == len(sent)
        collector.stopping.set()
        await collecting
        return collector.by_id, await asyncio.wait_for(_tail(kafka, 3), 30)

    by_id, tailed = asyncio.run(run())
    assert {i: (f.tier, f.revision) for i, f in by_id.items()} == {"a": ("deep", 1), "b": ("base", 0)}
    assert tailed == [("a", 0), ("b", 0), ("a", 1)]


async def _tail(kafka: KafkaSettings, count: int) -> list[tuple[str, int]]:
    tailed = []
    async for f in iter_forecasts(kafka, from_beginning=True):
        tailed.append((f.id, f.revision))
        if len(tailed) == count:
            return tailed
    return tailed


async def _copies(collector: ForecastCollector, count: int) -> list:
    for _ in range(100):
        if len(collector.copies) >= count:
            break
        await asyncio.sleep(0.1)
    return collector.copies
