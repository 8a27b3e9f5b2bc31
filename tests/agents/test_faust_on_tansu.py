"""A real faust-streaming worker process against the embedded Tansu broker.

The worker runs `faust.Worker` over an app built with the agents worker's own settings
(`agents.app.faust_settings`); it upper-cases every value of a 4-partition topic into a 1-partition
topic. Timings are printed (-s).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from streams.admin import ensure_topics
from streams.embedded import ChildProcess
from streams.ports import free_port

pytestmark = pytest.mark.integration
REPO_ROOT = Path(__file__).resolve().parents[2]
SOURCE_PARTITIONS = 4

WORKER_SCRIPT = '''
import sys
from pathlib import Path

import faust

from agents.app import faust_settings
from streams.settings import KafkaSettings


def create_app(bootstrap, web_port, app_id, source, sink, datadir):
    app = faust.App(app_id, **faust_settings(KafkaSettings(bootstrap), web_port=web_port, datadir=datadir))
    raw = dict(key_serializer="raw", value_serializer="raw")
    source_topic = app.topic(source, partitions=4, **raw)
    sink_topic = app.topic(sink, partitions=1, **raw)

    @app.agent(source_topic)
    async def upper(stream):
        async for event in stream.events():
            await sink_topic.send(key=event.key, value=event.value.upper())
            print(f"PROCESSED {event.message.partition} {event.message.offset}", flush=True)

    @app.on_partitions_assigned.connect
    async def report_assignment(app, assigned, **kwargs):
        print(f"ASSIGNED {len(assigned)}", flush=True)

    return app


if __name__ == "__main__":
    bootstrap, web_port, app_id, source, sink, datadir = sys.argv[1:7]
    app = create_app(bootstrap, int(web_port), app_id, source, sink, Path(datadir))
    faust.Worker(app, loglevel="warning", redirect_stdouts=False).execute_from_commandline()
'''


class FaustWorker:
    """One worker process; its stdout goes to a log file we can read back."""

    def __init__(self, workdir: Path, bootstrap: str, prefix: str, name: str) -> None:
        script = workdir / "upper_worker.py"
        script.write_text(WORKER_SCRIPT)
        self.log_path = workdir / f"{name}.log"
        argv = [sys.executable, str(script), bootstrap, str(free_port()), f"{prefix}app",
                f"{prefix}in", f"{prefix}out", str(workdir / f"{name}-data")]
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
        self.started_s = time.monotonic()
        self.process = ChildProcess(argv, self.log_path, env=env)

    def log_lines(self, marker: str) -> list[str]:
        """Lines carrying `marker`, from it on (Faust's spinner prefixes codes)."""
        lines = self.log_path.read_text(errors="replace").splitlines()
        return [line[line.index(marker):] for line in lines if marker in line]

    def wait_assigned_s(self, timeout_s: float) -> float:
        """Seconds from spawn until partitions were assigned."""
        deadline_s = self.started_s + timeout_s
        while not self.log_lines("ASSIGNED"):
            assert not self.process.has_exited(), self.log_path.read_text()
            assert time.monotonic() < deadline_s, self.log_path.read_text()
            time.sleep(0.05)
        return time.monotonic() - self.started_s

    def stop(self, sig: signal.Signals, timeout_s: float = 10) -> tuple[int, float]:
        """Send `sig`; return (exit code, seconds until exit)."""
        started_s = time.monotonic()
        self.process.send_signal(sig)
        return self.process.wait(timeout_s), time.monotonic() - started_s


async def _produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    """Round-robin over partitions so every partition gets new records."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for index, value in enumerate(values):
            await producer.send_and_wait(topic, value, partition=index % SOURCE_PARTITIONS)
    finally:
        await producer.stop()


async def _read_exactly(bootstrap: str, topic: str, count: int, timeout_s: float) -> list[bytes]:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", fetch_max_wait_ms=100)
    await consumer.start()
    values: list[bytes] = []
    try:
        async with asyncio.timeout(timeout_s):
            while len(values) < count:
                batches = await consumer.getmany(timeout_ms=100)
                values += [record.value for batch in batches.values() for record in batch]
    finally:
        await consumer.stop()
    return values


async def _committed_total(bootstrap: str, group: str, topic: str) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(SOURCE_PARTITIONS)]
        return sum([await consumer.committed(tp) or 0 for tp in partitions])
    finally:
        await consumer.stop()


async def _wait_committed(bootstrap: str, group: str, topic: str, total: int, timeout_s: float) -> None:
    async with asyncio.timeout(timeout_s):
        while await _committed_total(bootstrap, group, topic) < total:
            await asyncio.sleep(0.1)


@pytest.fixture
def spawn_worker(kafka_bootstrap: str, topics: str, tmp_workdir: Path):
    """Start named workers; any still running at teardown is killed."""
    workers: list[FaustWorker] = []

    def spawn(name: str) -> FaustWorker:
        workers.append(FaustWorker(tmp_workdir, kafka_bootstrap, topics, name))
        return workers[-1]

    yield spawn
    for worker in workers:
        worker.process.stop(timeout_s=2)


@pytest.fixture
def topics(kafka_bootstrap: str, topic_prefix: str) -> str:
    asyncio.run(ensure_topics(
        kafka_bootstrap, {f"{topic_prefix}in": SOURCE_PARTITIONS, f"{topic_prefix}out": 1}))
    return topic_prefix


def _values(batch: str, count: int) -> list[bytes]:
    return [f"{batch}-{i}".encode() for i in range(count)]


def test_worker_processes_all_partitions_and_stops_on_sigterm(
    kafka_bootstrap: str, topics: str, spawn_worker,
) -> None:
    sent = _values("a", 20)
    asyncio.run(_produce(kafka_bootstrap, f"{topics}in", sent))
    worker = spawn_worker("w1")
    out = asyncio.run(_read_exactly(kafka_bootstrap, f"{topics}out", len(sent), timeout_s=30))
    first_batch_s = time.monotonic() - worker.started_s
    assert sorted(out) == sorted(value.upper() for value in sent)
    assert worker.log_lines("ASSIGNED") == [f"ASSIGNED {SOURCE_PARTITIONS}"]
    exit_code, stop_s = worker.stop(signal.SIGTERM)
    assert exit_code == 0
    assert stop_s < 5
    print(f"\nspawn->20 outputs {first_batch_s:.2f}s, SIGTERM->exit {stop_s:.2f}s")


def test_restarted_workers_resume_from_committed_offsets(
    kafka_bootstrap: str, topics: str, spawn_worker,
) -> None:
    source, sink, group = f"{topics}in", f"{topics}out", f"{topics}app"
    asyncio.run(_produce(kafka_bootstrap, source, _values("a", 8)))
    first = spawn_worker("w1")
    asyncio.run(_read_exactly(kafka_bootstrap, sink, 8, timeout_s=30))
    assert first.stop(signal.SIGTERM)[0] == 0  # clean stop commits on the way out

    asyncio.run(_produce(kafka_bootstrap, source, _values("b", 8)))
    second = spawn_worker("w2")
    asyncio.run(_read_exactly(kafka_bootstrap, sink, 16, timeout_s=30))
    assert len(second.log_lines("PROCESSED")) == 8  # nothing from batch a again
    asyncio.run(_wait_committed(kafka_bootstrap, group, source, 16, timeout_s=10))
    second.stop(signal.SIGKILL)  # a crash: no LeaveGroup, the member lingers

    asyncio.run(_produce(kafka_bootstrap, source, _values("c", 8)))
    third = spawn_worker("w3")
    assigned_after_crash_s = third.wait_assigned_s(timeout_s=15)
    out = asyncio.run(_read_exactly(kafka_bootstrap, sink, 24, timeout_s=30))
    assert sorted(out) == sorted(v.upper() for v in _values("a", 8) + _values("b", 8) + _values("c", 8))
    assert len(third.log_lines("PROCESSED")) == 8
    third.stop(signal.SIGTERM)
    print(f"\nrestart after SIGKILL -> partitions assigned in {assigned_after_crash_s:.2f}s")
