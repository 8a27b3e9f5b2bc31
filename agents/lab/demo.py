"""`finllm demo`: the whole pipeline on one machine, from a tape to scored forecasts.

Start (or use) Kafka and Redis, create the topics, start the agents and inference workers as
separate processes, replay the tape, wait for every forecast its triggers must yield, stop
everything, and report counts, latency and directional accuracy against the tape's realised moves.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Awaitable, Callable, Iterator

from agents.config import AgentsConfig
from agents.offline import fired_triggers
from agents.lab.report import build_report, forecasts_frame
from inference.adapters.shipped import base_tier_env, shipped_routing
from inference.engine.cpu import describe_processor
from inference.tiering import tier_env
from inference.worker import HTTP_PORT_ENV
from streams.admin import ensure_topics
from streams.chaos import malformed_records
from streams.consumer import ForecastCollector
from streams.embedded import EmbeddedKafka, EmbeddedRedis, ServiceConfig
from streams.processes import WorkerProcess
from streams.producer import make_producer
from streams.replay import replay
from streams.settings import KafkaSettings
from streams.tape import Tape
from streams.topics import Topics

READY_TIMEOUT_S = 240.0
Alongside = Callable[[], Awaitable[None]]   # a load run beside the replay (benchmarks): started, then cancelled


def default_speed() -> float:
    """The demo's replay speed when none is given: 30x where the engine computes in bf16 natively (AMX
    tiles or AVX-512 bf16) or on CUDA, else 15x. Measured on 2 cores with both tiers (README "Quick start"):
    an AMD EPYC with AVX-512 bf16 (no AMX) answers all 160 sample triggers in time at 30x since the base
    tier serves the distilled 8-layer student (p99 0.66 s; with the whole model in the base tier, a
    third expired at 30x); an Intel Xeon with AMX did so before; an AMD EPYC with AVX2 only computes in
    float32 (the base tier in int8) and is not re-measured, so it keeps 15x."""
    import torch

    from inference.engine.cpu import cpu_flags

    native_bf16 = {"amx_bf16", "avx512_bf16"} & set(cpu_flags())
    return 30.0 if torch.cuda.is_available() or native_bf16 else 15.0


@dataclass(frozen=True, slots=True)
class DemoOptions:
    out_dir: Path
    tape: Path
    speed: float | None = None          # None: replay as fast as possible
    partitions: int = 4
    bootstrap: str | None = None        # None: start the embedded broker
    redis_url: str | None = None        # None: start the embedded Redis
    engine: str = "paged"
    model: str | None = None            # None: FINLLM_MODEL, else the default model
    timeout_s: float = 600.0            # for all forecasts to arrive after the replay
    inject_bad: int = 0                 # malformed records sent before the tape, to show they are contained
    agents_workers: int = 1             # Faust workers in one group: they split the symbols by partition
    bundle_ms: int = 0                  # replay ticks in per-symbol bundles of this event-time span
    adapters: bool = True               # serve the adapters shipped for the model (if any), by sector
    deep_tier: bool = True              # start the deep tier's worker pool (escalated forecasts)


def _resolved_quant(setting: str) -> str:
    """A tier's quantisation as its engine on this machine's CPU resolves it ("auto" -> "int8" or "none")."""
    from inference.engine.cpu import default_dtype, default_quant

    return default_quant("cpu", default_dtype("cpu")) if setting == "auto" else setting or "none"


@contextlib.contextmanager
def services(opts: DemoOptions, workdir: Path) -> Iterator[tuple[str, str, bool]]:
    """(bootstrap, redis_url, embedded_kafka): the given services, or embedded ones started here."""
    with contextlib.ExitStack() as stack:
        bootstrap, redis_url = opts.bootstrap, opts.redis_url
        if not bootstrap:
            bootstrap = stack.enter_context(EmbeddedKafka(ServiceConfig(workdir)).start()).bootstrap
        if not redis_url:
            redis_url = stack.enter_context(EmbeddedRedis(ServiceConfig(workdir)).start()).url
        yield bootstrap, redis_url, not opts.bootstrap


def run_demo(opts: DemoOptions, alongside: Alongside | None = None) -> dict:
    """The demo's report. `alongside`: a coroutine function started once the workers are ready, as the
    replay starts, and cancelled once every forecast came (a benchmark's HTTP flood)."""
    began = time.monotonic()
    opts.out_dir.mkdir(parents=True, exist_ok=True)
    workdir = opts.out_dir / "run"
    workdir.mkdir(exist_ok=True)
    tape = Tape.read(opts.tape)
    cfg = AgentsConfig.from_env()
    expected = {f.id for f in fired_triggers(tape.events(), cfg)}
    run_id = uuid.uuid4().hex[:8]
    with services(opts, workdir) as (bootstrap, redis_url, embedded):
        prefix = os.environ.get("FINLLM_TOPIC_PREFIX", "" if embedded else f"demo-{run_id}.")
        kafka = KafkaSettings.from_env(bootstrap) if not embedded else KafkaSettings(bootstrap)
        kafka = KafkaSettings(bootstrap, Topics(prefix, opts.partitions), kafka.security_protocol,
                              kafka.sasl_mechanism, kafka.sasl_username, kafka.sasl_password, kafka.ssl_cafile)
        result = asyncio.run(_pipeline(opts, tape, kafka, redis_url, expected, run_id, workdir, alongside))
    report = build_report(tape, cfg, expected, result) | {
        "processor": describe_processor(), "model_threads": result["model_threads"], "models": result["models"],
        "dtype": os.environ.get("FINLLM_ENGINE_DTYPE") or "engine default for this processor",
        "quant": {tier: _resolved_quant(tier_env(tier, dict(os.environ))["FINLLM_ENGINE_QUANT"])
                  for tier in ("base", "deep")[:2 if opts.deep_tier else 1]},
        "wall_s": round(time.monotonic() - began, 1)}
    forecasts_frame(result["forecasts"], tape).write_parquet(opts.out_dir / "forecasts.parquet")
    return report


async def _pipeline(opts: DemoOptions, tape: Tape, kafka: KafkaSettings, redis_url: str, expected: set[str],
                    run_id: str, workdir: Path, alongside: Alongside | None = None) -> dict:
    await ensure_topics(kafka.bootstrap, kafka.topics.all())
    env = dict(os.environ, **kafka.env(), FINLLM_REDIS_URL=redis_url, FINLLM_ENGINE=opts.engine,
               FINLLM_AGENTS_APP_ID=f"finllm-agents-{run_id}", FINLLM_INFERENCE_GROUP=f"finllm-inference-{run_id}")
    # everything runs on this machine: the model's threads leave a core to the broker, agents and replay
    # (on 2 cores, 2 model threads made a step ~1.7x slower than 1 under their load: bench/RESULTS.md)
    env.setdefault("FINLLM_TORCH_THREADS", str(max(1, (os.cpu_count() or 2) - 1)))
    model = opts.model or os.environ.get("FINLLM_MODEL") or None   # None: the default model
    if model:
        env["FINLLM_MODEL"] = model
    routing = shipped_routing(model) if opts.adapters else None
    if routing:   # trained for the served model: each symbol's requests name its sector's adapter
        env.update(routing.env())
    started, beside = time.monotonic(), None
    names = ["agents"] if opts.agents_workers == 1 else [f"agents-{i}" for i in range(opts.agents_workers)]
    workers = [WorkerProcess(name, "agents.worker", env, workdir) for name in names]
    # the HTTP API (FINLLM_HTTP_PORT, when set) is served with the whole model: by the deep tier's worker, or
    # by the base tier's when there is no deep tier (which then keeps the whole model: base_tier_env)
    base_env = tier_env("base", {k: v for k, v in env.items() if k != HTTP_PORT_ENV} if opts.deep_tier
                        else dict(env, FINLLM_ESCALATE="0"))                          # no pool: no revisions
    workers.append(WorkerProcess("inference", "inference.worker", base_env, workdir))
    if opts.deep_tier:     # the deep tier's own pool: escalated forecasts, full precision, the longer prompt;
        # its answers are revisions without a deadline, so on shared cores it runs only in the time nothing
        # else wants (SCHED_IDLE): it never slows the base tier's forecasts
        workers.append(WorkerProcess("inference-deep", "inference.worker", tier_env("deep", env), workdir,
                                     idle=True))
    try:
        for worker in workers:
            await asyncio.to_thread(worker.wait_ready, READY_TIMEOUT_S)
        startup_s = time.monotonic() - started
        collector = ForecastCollector(kafka, expected)
        collecting = asyncio.create_task(collector.run())
        await collector.started.wait()
        await _inject_bad(kafka, opts.inject_bad)
        beside = asyncio.create_task(alongside()) if alongside else None
        stats = await replay(tape, kafka, speed=opts.speed, bundle_ms=opts.bundle_ms)
        await _wait_for_forecasts(collector, workers, opts.timeout_s)
    finally:
        failed = await _stop(beside)
        exit_codes = {w.name: w.stop() for w in workers}
    collector.stopping.set()
    await collecting
    if failed is not None:
        raise RuntimeError("the load run beside the replay failed") from failed
    return {"forecasts": list(collector.by_id.values()), "first_answers": list(collector.first_answers.values()),
            "wire_forecasts": len(collector.copies),
            "wire_revisions": len({(f.id, f.revision) for _, f in collector.copies}),
            "deadletters": collector.deadletter_reasons(), "replay": stats, "startup_s": startup_s,
            "exit_codes": exit_codes, "engine": opts.engine, "partitions": opts.partitions, "speed": opts.speed,
            "topic_prefix": kafka.topics.prefix, "model_threads": int(env["FINLLM_TORCH_THREADS"]),
            "models": {"base": base_tier_env(base_env).get("FINLLM_MODEL") or "default",
                       **({"deep": env.get("FINLLM_MODEL") or "default"} if opts.deep_tier else {})}}


async def _stop(task: asyncio.Task | None) -> Exception | None:
    """Cancel `task` (if any) and wait for it; what it failed with before, if it did."""
    if task is None:
        return None
    task.cancel()
    (outcome,) = await asyncio.gather(task, return_exceptions=True)
    return outcome if isinstance(outcome, Exception) else None


async def _wait_for_forecasts(collector: ForecastCollector, workers: list[WorkerProcess], timeout_s: float) -> None:
    """Until every expected forecast came, and every escalated one its deep revision, or `timeout_s`
    passed; a worker that exits meanwhile fails the run at once (WorkerFailed with its log tail) instead
    of leaving it to the timeout."""
    deadline = time.monotonic() + timeout_s
    while not (collector.done.is_set() and not collector.awaiting_revision()) and time.monotonic() < deadline:
        for worker in workers:
            worker.check_alive()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(collector.done.wait(), min(0.5, max(deadline - time.monotonic(), 0.01)))
        if collector.done.is_set():
            await asyncio.sleep(0.2)


async def _inject_bad(kafka: KafkaSettings, count: int) -> None:
    if not count:
        return
    producer = make_producer(kafka)
    await producer.start()
    try:
        for kind, raw, _ in malformed_records(count):
            await producer.send(kafka.topics.ticks if kind == "tick" else kafka.topics.news, raw, key=b"ACME")
        await producer.flush()
    finally:
        await producer.stop()
