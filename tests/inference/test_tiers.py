"""Two tiers as two worker pools on a real broker and Redis: the base tier skips, answers and escalates;
the deep tier answers the escalated forecasts again, as revision 1 of the same id, from its own topic.
Real embedded broker and Redis, the real paged engine on the tiny model, one worker of each tier here."""
from __future__ import annotations

import asyncio
import time

import pytest
from aiokafka import AIOKafkaConsumer

from inference.fusion import FusionPolicy
from inference.scorers.engine import EngineScorer
from inference.tiering import TierPolicy
from inference.worker import InferenceWorker, WorkerConfig
from schemas import InferenceRequest, Probs, decode_deadletter, decode_forecast, encode
from streams.admin import ensure_topics
from streams.latest import LatestStore
from streams.producer import make_producer
from streams.settings import KafkaSettings
from streams.topics import Topics

pytestmark = pytest.mark.integration
TIMEOUT_S = 120.0
# every answered forecast with news is "low confidence" under this bar: it escalates; the deep revision is due
# late enough that a loaded machine (the deep worker joining its group, the full suite beside it) still makes it
ESCALATE_ALL = TierPolicy(low_confidence=1.01, deep_deadline_ms=600_000)


def request(rid: str, numeric: Probs, news: tuple[str, ...], new_news: int | None, **kw) -> InferenceRequest:
    now = time.time_ns()
    return InferenceRequest(rid, f"S{rid}", 10**18, 60, "cadence", f"short prompt {rid} (up, down or flat):",
                            numeric, news, None, now, now, now + 600 * 10**9, new_news=new_news,
                            prompt_deep=f"a longer prompt {rid} with more news and history (up, down or flat):", **kw)


def make_requests() -> list[InferenceRequest]:
    """Built when the test runs: deadlines are wall-clock, and the full suite runs this long after collection."""
    return [
        request("confident", Probs(0.02, 0.02, 0.96), ("n1",), 0),      # sure, nothing new: skipped
        request("news", Probs(0.34, 0.33, 0.33), ("n1", "n2"), 2),      # unsure, new news: answered, escalated
        request("quiet", Probs(0.34, 0.33, 0.33), (), 0),               # no news: worth too little to escalate
    ]


async def read_topic(kafka: KafkaSettings, topic: str, count: int, decode) -> list:
    consumer = AIOKafkaConsumer(topic, **kafka.client_kwargs(), auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    records, deadline = [], time.monotonic() + TIMEOUT_S
    try:
        while len(records) < count and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            records += [decode(r.value) for part in batch.values() for r in part]
    finally:
        await consumer.stop()
    return records


async def run_tiers(kafka: KafkaSettings, redis_url: str, model_dir: str) -> tuple[list, list, dict]:
    await ensure_topics(kafka.bootstrap, kafka.topics.all())
    group = f"{kafka.topics.prefix}inference"
    scorers = [EngineScorer(model_dir) for _ in range(2)]
    workers = [InferenceWorker(kafka, redis_url, scorer, WorkerConfig(group_id=group, tier=tier), FusionPolicy(),
                               ESCALATE_ALL) for scorer, tier in zip(scorers, ("base", "deep"))]
    tasks = [asyncio.create_task(worker.run()) for worker in workers]
    try:
        producer = make_producer(kafka)
        await producer.start()
        requests = make_requests()
        for r in requests:
            await producer.send_and_wait(kafka.topics.requests, encode(r), key=r.symbol.encode())
        await producer.send_and_wait(kafka.topics.requests_deep, b'{"id": "broken"}', key=b"x")
        await producer.stop()
        forecasts = await read_topic(kafka, kafka.topics.forecasts, len(requests) + 1, decode_forecast)
        letters = await read_topic(kafka, kafka.topics.deadletter, 1, decode_deadletter)
        store = LatestStore.from_url(redis_url, kafka.topics.prefix)
        latest = await store.read("Snews")
        await store.close()
    finally:
        for worker in workers:
            worker.stopping.set()
        await asyncio.gather(*tasks)
        for scorer in scorers:
            scorer.close()
    return forecasts, letters, latest


def test_the_base_tier_skips_answers_and_escalates_and_the_deep_tier_publishes_a_revision(
        kafka_bootstrap, redis_url, topic_prefix, tiny_model_dir):
    kafka = KafkaSettings(kafka_bootstrap, Topics(topic_prefix, 2))
    forecasts, letters, latest = asyncio.run(run_tiers(kafka, redis_url, str(tiny_model_dir)))
    got = {(f.id, f.revision): f for f in forecasts}
    assert set(got) == {("confident", 0), ("news", 0), ("news", 1), ("quiet", 0)}
    skipped = got["confident", 0]
    assert skipped.status == "skipped" and skipped.llm is None and skipped.probs == skipped.numeric
    assert not skipped.escalated
    base, deep = got["news", 0], got["news", 1]
    assert (base.tier, base.status, base.escalated) == ("base", "ok", True)
    assert (deep.tier, deep.status, deep.escalated) == ("deep", "ok", False)
    assert forecasts.index(base) < forecasts.index(deep)          # the revision comes after the first answer
    assert deep.llm != base.llm                                    # the deep tier scored its longer prompt
    assert got["quiet", 0].status == "ok" and not got["quiet", 0].escalated
    assert (latest["id"], latest["tier"], latest["revision"]) == ("news", "deep", 1)
    assert [(d.reason, d.stage, d.topic) for d in letters] == [
        ("missing_field", "inference", kafka.topics.requests_deep)]
