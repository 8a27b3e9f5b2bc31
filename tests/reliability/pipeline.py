"""A pipeline under test: its own Kafka and Redis on fixed ports (so either can be stopped and started
again), the agents and inference workers as processes, and a reader of `forecasts` and `deadletter`.

The forecasts every run must yield are computed without Kafka: the agents' processor over the tape
in order (agents.offline) and the same model scoring each request in this process.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from pathlib import Path
from typing import AsyncIterator

from agents.config import AgentsConfig
from agents.offline import fired_triggers
from agents.processor import Processor
from schemas import Forecast
from streams.admin import ensure_topics
from streams.consumer import ForecastCollector
from streams.embedded import EmbeddedKafka, EmbeddedRedis, ServiceConfig
from streams.ports import free_port
from streams.processes import WorkerProcess
from streams.settings import KafkaSettings
from streams.tape import Tape
from streams.topics import Topics

READY_TIMEOUT_S = 120.0
MODULES = {"agents": "agents.worker", "inference": "inference.worker"}


TOLERANCE = 1e-4   # batch composition changes the model's float sums slightly (padding, kernels)


def projection(forecast: Forecast) -> tuple:
    """What must not change between runs: everything but latency and publication time."""
    llm = None if forecast.llm is None else forecast.llm.as_tuple()
    return (forecast.id, forecast.symbol, forecast.ts_ns, forecast.trigger, forecast.status, forecast.news_ids,
            forecast.numeric.as_tuple(), llm, forecast.probs.as_tuple())


def same(forecast: Forecast, expected: tuple) -> bool:
    """The forecast equals the expected projection, probabilities within TOLERANCE."""
    got = projection(forecast)
    if got[:6] != expected[:6] or (got[7] is None) != (expected[7] is None):
        return False
    pairs = [(a, b) for i in (6, 7, 8) if got[i] is not None for a, b in zip(got[i], expected[i])]
    return all(abs(a - b) <= TOLERANCE for a, b in pairs)


def expected_forecasts(tape: Tape, cfg: AgentsConfig) -> dict[str, tuple]:
    """id -> projection of the forecast an undisturbed run publishes for each trigger of the tape."""
    from inference.fusion import FusionPolicy
    from inference.scorers.hf import HFScorer
    from inference.checkpoints import resolve_model_dir
    from inference.scorers.base import ScoreItem
    from inference.tiering import TierPolicy
    from inference.worker import make_forecast

    processor = Processor(cfg)           # builds the requests (its per-symbol prompt cache starts empty)
    fired = list(fired_triggers(tape.events(), cfg))
    for symbol in {f.symbol for f in fired}:
        processor.state(symbol, 0)
    requests, skipped = TierPolicy().plan([processor.request(f, 0) for f in fired])   # as the base tier does
    scorer = HFScorer(str(resolve_model_dir(os.environ.get("FINLLM_MODEL"))))
    try:
        results = scorer.score([ScoreItem(r.id, r.prompt, r.adapter, None) for r in requests])
        policy = FusionPolicy.from_env()
        return {r.id: projection(make_forecast(r, None if r.id in skipped else res, model=scorer.model_name,
                                               policy=policy, picked_wall_ns=0, inference_ms=0.0,
                                               skipped=r.id in skipped))
                for r, res in zip(requests, results)}
    finally:
        scorer.close()


class Services:
    """Tansu and Redis on ports fixed for the life of the test, each restartable in place."""

    def __init__(self, workdir: Path) -> None:
        self.kafka = EmbeddedKafka(ServiceConfig(workdir / "kafka", port=free_port()))
        self.redis = EmbeddedRedis(ServiceConfig(workdir / "redis", port=free_port()))
        (workdir / "kafka").mkdir(parents=True, exist_ok=True)
        (workdir / "redis").mkdir(parents=True, exist_ok=True)
        self.kafka_port, self.redis_port = self.kafka.config.port, self.redis.config.port

    def start(self) -> Services:
        self.kafka.start()
        self.redis.start()
        return self

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.kafka_port}"

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    def stop(self) -> None:
        self.redis.stop()
        self.kafka.stop()


class Pipeline:
    """Topics under a fresh prefix, and the two workers as processes (started, killed, restarted)."""

    def __init__(self, services: Services, workdir: Path, *, partitions: int = 3, **env: str) -> None:
        run_id = uuid.uuid4().hex[:8]
        self.kafka = KafkaSettings(services.bootstrap, Topics(f"r{run_id}.", partitions))
        self.workdir = workdir
        self.env = dict(os.environ, **self.kafka.env(), FINLLM_REDIS_URL=services.redis_url, FINLLM_ENGINE="hf",
                        FINLLM_AGENTS_APP_ID=f"agents-{run_id}", FINLLM_INFERENCE_GROUP=f"inference-{run_id}",
                        FINLLM_DEADLINE_MS="600000", FINLLM_METRICS_PORT="0")
        self.env.update(env)
        self.workers: dict[str, WorkerProcess] = {}

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[ForecastCollector]:
        """Topics created, both workers ready, and a reader of `forecasts` and `deadletter` in a group of its
        own (it rejoins after a broker restart); on leaving, the workers stop and every record read must
        have been readable."""
        await self.create_topics()
        await self.start_all()
        collector = ForecastCollector(self.kafka, group_id=f"{self.kafka.topics.prefix}collector")
        reading = asyncio.create_task(collector.run())
        await collector.started.wait()
        try:
            yield collector
        finally:
            self.stop_all()
            collector.stopping.set()
            await reading
        assert not collector.unreadable, collector.unreadable

    async def create_topics(self) -> None:
        await ensure_topics(self.kafka.bootstrap, self.kafka.topics.all())

    def start(self, name: str) -> WorkerProcess:
        self.workers[name] = WorkerProcess(name, MODULES[name], self.env, self.workdir)
        return self.workers[name]

    async def start_all(self) -> None:
        for name in MODULES:
            self.start(name)
        for worker in self.workers.values():
            await asyncio.to_thread(worker.wait_ready, READY_TIMEOUT_S)

    def stop_all(self) -> dict[str, int]:
        return {name: worker.stop() for name, worker in self.workers.items()}
