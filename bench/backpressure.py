"""Backpressure: an inference worker slower than the triggers, on a real (embedded) broker.

Requests are produced at `--rate` per second; the worker's model costs `--cost-ms` per request it
actually computes (the real HF scorer, slowed down), so it can serve about 1000 / cost_ms a second.
A request whose deadline (`--deadline-ms` after it was created) passes before it is computed is
answered at once as an `expired` numeric-only forecast, which costs no model time: that sheds the
excess load, so the backlog stays bounded (about rate x deadline) and `forecasts` keeps flowing.

    python bench/backpressure.py --rate 40 --seconds 20 --cost-ms 50 --deadline-ms 1000

Prints triggers/s, forecasts/s, the expired share, the largest backlog and the longest pause on
`forecasts`. `run()` is what tests/reliability/test_backpressure.py calls.
"""
from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from aiokafka import AIOKafkaConsumer

from inference.adapters.watch import SerializedScorer
from inference.fusion import FusionPolicy
from inference.scorers.base import ScoreItem, ScoreResult
from inference.worker import InferenceWorker, WorkerConfig
from schemas import InferenceRequest, Probs, decode_forecast, encode
from streams.admin import ensure_topics
from streams.embedded import EmbeddedKafka, ServiceConfig
from streams.producer import make_producer
from streams.settings import KafkaSettings
from streams.topics import Topics

SAMPLE_S = 0.25


class ThrottledScorer(SerializedScorer):
    """A real scorer whose every computed (not expired) request costs `cost_s` more."""

    prefix_caching = False   # warm-ups are not queued

    def __init__(self, inner, cost_s: float) -> None:
        super().__init__(inner)
        self.cost_s = cost_s

    def score(self, items: Sequence[ScoreItem]) -> list[ScoreResult]:
        now_ns = time.time_ns()
        live = sum(1 for i in items if i.deadline_ns is None or i.deadline_ns > now_ns)
        time.sleep(self.cost_s * live)
        return super().score(items)


@dataclass(frozen=True, slots=True)
class Figures:
    requests: int
    forecasts: int
    expired: int
    triggers_per_s: float
    forecasts_per_s: float
    max_backlog: int
    max_pause_s: float
    drain_s: float

    @property
    def expired_share(self) -> float:
        return self.expired / max(self.forecasts, 1)

    def line(self) -> str:
        return (f"triggers/s {self.triggers_per_s:.1f}, forecasts/s {self.forecasts_per_s:.1f}, "
                f"expired {self.expired_share:.0%} ({self.expired}/{self.forecasts}), answered "
                f"{self.forecasts}/{self.requests}, max backlog {self.max_backlog}, longest pause on forecasts "
                f"{self.max_pause_s:.2f} s, drained {self.drain_s:.1f} s after the last trigger")


def make_request(i: int, deadline_ms: int) -> InferenceRequest:
    now_ns = time.time_ns()
    return InferenceRequest(f"bp-{i}", "ACME", 1_767_623_400 * 10**9 + i * 10**9, 60, "cadence",
                            f"Forecast for ACME.\nNews:\n- none\nMarket: ret1 +{i % 9}.0bp. Direction over the "
                            f"next 60s (up, down or flat):", Probs(0.3, 0.3, 0.4), (), None, now_ns, now_ns,
                            now_ns + deadline_ms * 1_000_000)


async def produce(kafka: KafkaSettings, rate: float, seconds: float, deadline_ms: int) -> int:
    producer = make_producer(kafka)
    await producer.start()
    sent, started = 0, time.monotonic()
    try:
        while (elapsed := time.monotonic() - started) < seconds:
            while sent < int(elapsed * rate) + 1:
                request = make_request(sent, deadline_ms)
                await producer.send(kafka.topics.requests, encode(request), key=request.symbol.encode())
                sent += 1
            await asyncio.sleep(0.005)
        await producer.flush()
    finally:
        await producer.stop()
    return sent


class Reader:
    def __init__(self, kafka: KafkaSettings) -> None:
        self.kafka, self.arrivals, self.statuses = kafka, [], {}
        self.stopping = asyncio.Event()

    async def run(self) -> None:
        consumer = AIOKafkaConsumer(self.kafka.topics.forecasts, **self.kafka.client_kwargs(), group_id=None,
                                    auto_offset_reset="earliest", enable_auto_commit=False)
        await consumer.start()
        try:
            while not self.stopping.is_set():
                batch = await consumer.getmany(timeout_ms=50)
                for record in (r for part in batch.values() for r in part):
                    forecast = decode_forecast(record.value)
                    self.statuses[forecast.id] = forecast.status
                    self.arrivals.append(time.monotonic())
        finally:
            await consumer.stop()


async def sample_backlog(sent: list[int], reader: Reader, peaks: list[int], stopping: asyncio.Event) -> None:
    while not stopping.is_set():
        peaks.append(sent[0] - len(reader.statuses))
        await asyncio.sleep(SAMPLE_S)


async def run_load(kafka: KafkaSettings, scorer, rate: float, seconds: float, deadline_ms: int,
                   max_batch: int = 8) -> Figures:
    await ensure_topics(kafka.bootstrap, kafka.topics.all())
    worker = InferenceWorker(kafka, None, scorer, WorkerConfig(group_id=f"{kafka.topics.prefix}bp",
                                                               max_batch=max_batch), FusionPolicy())
    reader, stopping, peaks, sent = Reader(kafka), asyncio.Event(), [], [0]
    tasks = [asyncio.create_task(worker.run()), asyncio.create_task(reader.run())]
    await asyncio.sleep(4.0)                                             # the worker joins its group
    sampling = asyncio.create_task(sample_backlog(sent, reader, peaks, stopping))
    started = time.monotonic()
    producing = asyncio.create_task(produce(kafka, rate, seconds, deadline_ms))
    while not producing.done():
        sent[0] = int((time.monotonic() - started) * rate)
        await asyncio.sleep(0.05)
    sent[0] = total = await producing
    load_end = time.monotonic()
    while len(reader.statuses) < total and time.monotonic() - load_end < 60:
        await asyncio.sleep(0.05)
    drained = time.monotonic()
    stopping.set()
    worker.stopping.set()
    reader.stopping.set()
    await asyncio.gather(sampling, *tasks)
    during = [t for t in reader.arrivals if started <= t <= load_end]
    gaps = [b - a for a, b in zip([started] + during, during + [load_end])]
    return Figures(total, len(reader.statuses), sum(s == "expired" for s in reader.statuses.values()),
                   total / (load_end - started), len(during) / (load_end - started), max(peaks, default=0),
                   max(gaps, default=0.0), drained - load_end)


def run(rate: float = 40.0, seconds: float = 20.0, cost_ms: float = 50.0, deadline_ms: int = 1000,
        bootstrap: str | None = None) -> Figures:
    from inference.checkpoints import resolve_model_dir
    from inference.scorers.factory import build_scorer

    scorer = ThrottledScorer(build_scorer("hf", resolve_model_dir(None), device="cpu", max_batch=8), cost_ms / 1e3)
    try:
        if bootstrap:
            return asyncio.run(run_load(_settings(bootstrap), scorer, rate, seconds, deadline_ms))
        with tempfile.TemporaryDirectory() as workdir, EmbeddedKafka(ServiceConfig(Path(workdir))) as kafka:
            return asyncio.run(run_load(_settings(kafka.bootstrap), scorer, rate, seconds, deadline_ms))
    finally:
        scorer.close()


def _settings(bootstrap: str) -> KafkaSettings:
    return KafkaSettings(bootstrap, Topics(f"bp{uuid.uuid4().hex[:6]}.", 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=40.0, help="inference requests per second")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--cost-ms", type=float, default=50.0, help="model time per computed request")
    parser.add_argument("--deadline-ms", type=int, default=1000)
    parser.add_argument("--bootstrap", default=None, help="a running broker (default: an embedded one)")
    args = parser.parse_args()
    print(run(args.rate, args.seconds, args.cost_ms, args.deadline_ms, args.bootstrap).line())


if __name__ == "__main__":
    main()
