"""The embedded broker stopped and started again on the same port in the middle of a replay.

Tansu runs on memory storage: a restart loses every topic, record and committed offset. What is lost:
records in flight (published but not yet consumed), the consumer groups' offsets, and the topics
themselves (re-created here, as `finllm up` would). What survives: the workers' processes and their
in-memory state (the agents' windows and held triggers, Faust's read positions, the agents' Redis
checkpoints, which then name offsets of the lost log).

Tested: the workers reconnect by themselves (no process dies, none is restarted): producers publish
the replay after the restart, the agents' and inference consumer groups join again and read the new
topics from their start, and every trigger fired by the records replayed after the restart gets its
forecast on the new broker, equal to an undisturbed run's. Triggers in flight at the restart are lost
(their number is printed). Known limitation, measured and printed: a reader that stays up across the
restart (this test's, in a consumer group) resumed at its positions in the lost log and missed most
new forecasts; readers should be restarted (or seek to the start) after a memory broker restarts.
"""
from __future__ import annotations

import asyncio
import time

import polars as pl
from aiokafka import AIOKafkaConsumer, TopicPartition
import pytest

from schemas import decode_forecast
from streams.replay import replay
from streams.tape import Tape
from tests.reliability.pipeline import Pipeline, Services, same

pytestmark = [pytest.mark.reliability, pytest.mark.integration]
SPEED = 30.0
DOWN_S = 2.0
# Reconnecting clients ask for metadata of topics the new broker lacks, and Tansu auto-creates them with
# 4 partitions, racing `ensure_topics`: with 4 partitions either way, whoever wins creates the same topics.
PARTITIONS = 4


def split(tape: Tape, cut_ns: int) -> tuple[Tape, Tape]:
    before = Tape.from_frames(tape.ticks.filter(pl.col("ts_ns") < cut_ns), tape.news.filter(pl.col("ts_ns") < cut_ns))
    after = Tape.from_frames(tape.ticks.filter(pl.col("ts_ns") >= cut_ns), tape.news.filter(pl.col("ts_ns") >= cut_ns))
    return before, after


async def restart_broker(services: Services, pipeline: Pipeline) -> float:
    started = time.monotonic()
    await asyncio.to_thread(services.kafka.stop)
    await asyncio.sleep(DOWN_S)
    services.kafka.start()   # from this long-lived thread: the child gets SIGTERM when its forking thread exits
    await pipeline.create_topics()
    return time.monotonic() - started


async def read_topic(kafka, topic: str) -> list[bytes]:
    consumer = AIOKafkaConsumer(**kafka.client_kwargs(), group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(kafka.topics.partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        values = []
        while batch := await consumer.getmany(timeout_ms=1000):
            values += [r.value for records in batch.values() for r in records]
        return values
    finally:
        await consumer.stop()


async def run_with_broker_restart(tape: Tape, services: Services, pipeline: Pipeline, ids: set[str]) -> dict:
    cut_ns = int(tape.ticks["ts_ns"].quantile(0.5))
    before, after = split(tape, cut_ns)
    async with pipeline.running() as collector:
        await replay(before, pipeline.kafka, speed=SPEED, progress=False)
        await asyncio.sleep(1.0)
        seen_before = set(collector.by_id)
        down_s = await restart_broker(services, pipeline)
        stats = await replay(after, pipeline.kafka, speed=SPEED, progress=False)
        await collector.wait_for(ids, 20.0)
        topics = pipeline.kafka.topics
        records = {name: await read_topic(pipeline.kafka, topic) for name, topic in
                   (("ticks", topics.ticks), ("symbol-news", topics.symbol_news), ("forecasts", topics.forecasts))}
        counts = {name: len(values) for name, values in records.items()}
        on_new_broker = {f.id: f for f in map(decode_forecast, records["forecasts"])}
        alive = {name: worker.process.poll() is None for name, worker in pipeline.workers.items()}
    return {"collector": collector, "cut_ns": cut_ns, "seen_before": seen_before, "down_s": down_s,
            "alive": alive, "counts": counts, "after_ticks": stats.ticks,
            "on_new_broker": on_new_broker}


@pytest.fixture(scope="module")
def restarted(tape, expected, tmp_path_factory) -> dict:
    workdir = tmp_path_factory.mktemp("broker")
    services = Services(workdir).start()
    try:
        run = asyncio.run(run_with_broker_restart(tape, services, Pipeline(services, workdir, partitions=PARTITIONS), set(expected)))
    finally:
        services.stop()
    got = run["collector"].by_id
    lost = set(expected) - set(got) - run["on_new_broker"].keys()
    print(f"\nbroker restart: down {run['down_s']:.1f} s; {len(run['seen_before'])} forecasts before, "
          f"{len(run['on_new_broker'])} after; {len(lost)} of {len(expected)} "
          f"triggers without a forecast; records on the new broker: {run['counts']}; "
          f"the reader that stayed up missed {len(run['on_new_broker'].keys() - set(got))} of them")
    return run


def test_clients_reconnect_after_a_broker_restart(restarted):
    assert restarted["alive"] == {"agents": True, "inference": True}
    assert restarted["counts"]["ticks"] == restarted["after_ticks"]    # the producer published everything
    assert restarted["counts"]["symbol-news"] > 0                     # the news router reads the new topics
    assert restarted["counts"]["forecasts"] > 0                       # the inference worker answers again


def test_every_trigger_after_a_broker_restart_gets_its_forecast(restarted, expected, tape):
    after = restarted["on_new_broker"]
    newest_before_ns = int(tape.ticks.filter(pl.col("ts_ns") < restarted["cut_ns"])["ts_ns"].max())
    after_ids = {i for i, p in expected.items() if p[2] >= newest_before_ns}
    assert after_ids and after_ids <= after.keys(), f"missing: {after_ids - after.keys()}"
    read = list(after.values()) + list(restarted["collector"].by_id.values())
    assert all(same(f, expected[f.id]) for f in read)
