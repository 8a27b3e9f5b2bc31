"""A pipeline under test: its own Kafka and Redis on fixed ports (so either can be stopped and started
again), the agents and inference workers as processes, and a reader of `forecasts` and `deadletter`.

The forecasts every run must yield are computed without Kafka: the agents' processor over the tape
in order (agents.offline) and the same model scoring each request in this process.
"""
from __future__ import annotations

import asyncio
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from aiokafka import AIOKafkaConsumer

from agents.config import AgentsConfig
from agents.offline import fired_triggers
from agents.processor import Processor
from schemas import DeadLetter, Forecast, SchemaError, decode_deadletter, decode_forecast
from streams.consumer import consume_until
from streams.admin import ensure_topics
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
    from inference.worker import make_forecast

    processor = Processor(cfg)           # builds the requests (its per-symbol prompt cache starts empty)
    fired = list(fired_triggers(tape.events(), cfg))
    for symbol in {f.symbol for f in fired}:
        processor.state(symbol, 0)
    requests = [processor.request(f, 0) for f in fired]
    scorer = HFScorer(str(resolve_model_dir(os.environ.get("FINLLM_MODEL"))))
    try:
        results = scorer.score([ScoreItem(r.id, r.prompt, r.adapter, None) for r in requests])
        policy = FusionPolicy.from_env()
        return {r.id: projection(make_forecast(r, res, model=scorer.model_name, policy=policy, picked_wall_ns=0,
                                               inference_ms=0.0)) for r, res in zip(requests, results)}
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


@dataclass
class Collector:
    """Every forecast copy on the wire (with its arrival time) and every dead letter."""

    kafka: KafkaSettings
    copies: list[tuple[float, Forecast]] = field(default_factory=list)
    deadletters: list[DeadLetter] = field(default_factory=list)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    started: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def by_id(self) -> dict[str, Forecast]:
        out: dict[str, Forecast] = {}
        for _, forecast in self.copies:
            out.setdefault(forecast.id, forecast)
        return out

    async def run(self) -> None:
        topics = self.kafka.topics
        # A group member, as a real reader (streams.consumer.iter_forecasts): after a broker that lost its
        # state comes back, the group is joined again and reads the new log from its start. (A reader
        # without a group would keep its positions from the lost log and skip the new records below them.)
        consumer = AIOKafkaConsumer(topics.forecasts, topics.deadletter, **self.kafka.client_kwargs(),
                                    group_id=f"{topics.prefix}collector", auto_offset_reset="earliest",
                                    enable_auto_commit=True, session_timeout_ms=6_000, heartbeat_interval_ms=1_000)
        await consume_until(consumer, self.stopping, lambda r: self._take(r.topic, r.value or b""), self.started)

    def _take(self, topic: str, value: bytes) -> None:
        try:
            if topic == self.kafka.topics.deadletter:
                self.deadletters.append(decode_deadletter(value))
            else:
                self.copies.append((time.monotonic(), decode_forecast(value)))
        except SchemaError as error:
            raise AssertionError(f"unreadable record on {topic}: {error}") from None

    async def wait_for(self, ids: set[str], timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if ids <= self.by_id.keys():
                return True
            await asyncio.sleep(0.1)
        return False

    async def first_new_after(self, since: float, timeout_s: float) -> float | None:
        """Monotonic time of the first forecast copy that arrived after `since`."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            arrived = [at for at, _ in self.copies if at > since]
            if arrived:
                return min(arrived)
            await asyncio.sleep(0.05)
        return None


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
