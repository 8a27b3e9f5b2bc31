"""The Kafka-facing inference worker: requests in, fused forecasts out.

Workers run in one of two tiers (FINLLM_TIER), each a pool of its own with its own consumer group and
requests topic. The base tier (`inference-requests`) answers every trigger with the short prompt: the
tier policy (inference.tiering) values each request, skips the language model where the numeric forecast
is confident and no news is new (status "skipped"), scores the rest with the value as their priority, and
escalates divergent, low-confidence or review-flagged answers to the deep tier (`inference-requests-deep`),
marking the forecast `escalated`. The deep tier scores the longer prompt and publishes the answer as
revision 1 of the same forecast id (tier "deep"). Each pool's engine settings come from its own
environment (the demo and docker compose give the base pool FINLLM_ENGINE_QUANT=auto: int8 on CPUs without
native bf16).

Consume a batch of inference requests, score them with the language model (any `Scorer`), fuse
with the numeric signal, publish the forecasts, record the latest per symbol in Redis (with the prompt it
was scored on, which `finllm explain` asks the model about), and only
then commit the consumed offsets, so a crash replays requests rather than losing them.
Run it as `python -m inference.worker` (settings from the environment, see `WorkerConfig.from_env`).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections import deque
from dataclasses import dataclass, replace

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError

from inference.adapters.shipped import base_tier_env, load_routing
from inference.adapters.watch import start_registry_watch
from inference.fusion import FusionPolicy, fuse
from inference.metrics import InferenceMetrics
from inference.scorers.base import ScoreItem, ScoreResult, Scorer
from inference.scorers.factory import build_scorer
from inference.tiering import TierPolicy, value_first
from schemas import Forecast, InferenceRequest, Latency, Probs, SchemaError, decode_request, encode
from schemas.forecast import TIERS
from streams.health import mark_ready
from streams.latest import LatestStore
from streams.metrics import run_observability
from streams.producer import DeadLetters, make_producer
from streams.settings import ROUTING_FILE_ENV, KafkaSettings, env_flag

log = logging.getLogger("finllm.inference")
FETCH_MAX_WAIT_MS = 20  # the broker may hold a fetch this long: it bounds the queue wait of a request
MAX_QUEUED_WARMUPS = 256   # the oldest warm-ups are dropped beyond this (they only save latency)
HTTP_PORT_ENV = "FINLLM_HTTP_PORT"   # set: the worker also serves the HTTP API (inference.api) on this port
MAX_WARMUP_BATCH = 8       # warm-ups prefilled in one engine call (one step's fixed cost for all)


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    group_id: str = "finllm-inference"
    max_batch: int = 32
    poll_timeout_ms: int = 50
    session_timeout_ms: int = 6_000     # a crashed worker's partitions move to a restarted one within ~this
    engine: str = "paged"            # "paged" (our multi-LoRA engine) or "hf" (transformers + PEFT)
    model_dir: str | None = None     # None: the embedded default model, built on first use
    adapters: tuple[tuple[str, str], ...] = ()
    device: str | None = None        # None: "cuda" when available (Triton kernels), else "cpu"
    dtype: str | None = None         # paged engine; None: build_scorer's default (the processor's fast dtype)
    batch_invariant: bool | None = None   # paged engine; None: build_scorer's default (on for the CPU path)
    quant: str | None = None         # paged engine: "int8" or "auto" (FINLLM_ENGINE_QUANT); None: in `dtype`
    prefix_caching: bool = True      # paged engine: reuse computed prompt prefixes (warm-ups need it)
    torch_threads: int | None = None  # CPU threads for the model; None: torch's default (every core)
    tier: str = "base"               # "base": every trigger, escalates; "deep": the escalated ones, revision 1
    escalate: bool = True            # base tier: send escalated forecasts to the deep tier's topic
    max_inflight: int = 4            # Kafka polls scored at once (with the engine loop; else one at a time)

    def __post_init__(self) -> None:
        if self.tier not in TIERS:
            raise ValueError(f"tier must be one of {TIERS}, got {self.tier!r}")

    @property
    def group(self) -> str:
        """The tier's consumer group: each tier's pool shares its requests out among its own workers."""
        return self.group_id if self.tier == "base" else f"{self.group_id}-deep"

    @classmethod
    def from_env(cls) -> WorkerConfig:
        """The worker's settings; a base-tier worker serves the base tier's model and adapters
        (`base_tier_env`: FINLLM_BASE_MODEL)."""
        env, default = os.environ, cls()
        if (env.get("FINLLM_TIER") or default.tier) == "base":
            env = base_tier_env(dict(env))
        routed = load_routing(env[ROUTING_FILE_ENV]).adapters if env.get(ROUTING_FILE_ENV) else {}
        named = dict(tuple(p.split("=", 1)) for p in env.get("FINLLM_ADAPTER_PATHS", "").split(",") if p)
        adapters = tuple((name, str(path)) for name, path in (routed | named).items())
        return cls(group_id=env.get("FINLLM_INFERENCE_GROUP", default.group_id),
                   max_batch=int(env.get("FINLLM_MAX_BATCH", default.max_batch)),
                   engine=env.get("FINLLM_ENGINE", default.engine), model_dir=env.get("FINLLM_MODEL") or None,
                   adapters=adapters, device=env.get("FINLLM_DEVICE") or None,
                   dtype=env.get("FINLLM_ENGINE_DTYPE") or None,
                   batch_invariant=(env_flag(env, "FINLLM_ENGINE_BATCH_INVARIANT", True)
                                    if env.get("FINLLM_ENGINE_BATCH_INVARIANT") else None),
                   quant=env.get("FINLLM_ENGINE_QUANT") or None,
                   prefix_caching=env_flag(env, "FINLLM_PREFIX_CACHING", default.prefix_caching),
                   torch_threads=int(env["FINLLM_TORCH_THREADS"]) if env.get("FINLLM_TORCH_THREADS") else None,
                   tier=env.get("FINLLM_TIER") or default.tier, escalate=env_flag(env, "FINLLM_ESCALATE", True),
                   max_inflight=int(env.get("FINLLM_MAX_INFLIGHT", default.max_inflight)))


def configured_scorer(cfg: WorkerConfig) -> Scorer:
    """`build_scorer` with the worker's settings (the model folder resolved, torch's threads set)."""
    import torch

    from inference.checkpoints import resolve_model_dir

    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    return build_scorer(cfg.engine, resolve_model_dir(cfg.model_dir), adapters=dict(cfg.adapters), device=cfg.device,
                        dtype=cfg.dtype, max_batch=cfg.max_batch, prefix_caching=cfg.prefix_caching,
                        batch_invariant=cfg.batch_invariant, quant=cfg.quant)


def make_forecast(request: InferenceRequest, result: ScoreResult | None, *, model: str, policy: FusionPolicy,
                  picked_wall_ns: int, inference_ms: float, deep: ScoreResult | None = None,
                  deep_ms: float = 0.0, skipped: bool = False) -> Forecast:
    """The forecast answering `request` (its tier's revision). `skipped`: the language model was not asked.
    A deep request the deep tier could not answer keeps the base tier's answer (status expired or llm_error)."""
    llm = _published(_probs(result))
    status = "ok" if llm is not None else "skipped" if skipped else \
        "expired" if result is not None and result.expired else "llm_error"
    llm = llm or request.base_llm
    deep_probs = _published(_probs(deep))
    fused = _published(fuse(request.numeric, deep_probs or llm,
                              policy.weights_for(request.adapter, bool(request.news_ids))))
    now = time.time_ns()
    latency = Latency(queue_ms=(picked_wall_ns - request.created_wall_ns) / 1e6, inference_ms=inference_ms,
                      total_ms=(now - request.ingest_wall_ns) / 1e6, deep_ms=deep_ms)
    return Forecast(request.id, request.symbol, request.ts_ns, request.horizon_s, *fused.as_tuple(),
                    fused.direction, request.trigger, status, request.numeric, llm, request.news_ids, model,
                    request.adapter, latency, now, divergent=policy.diverges(request.numeric, llm),
                    deep=deep_probs, review=policy.needs_review(llm, request.features.get("ret_since_news")),
                    tier=request.tier, revision=int(request.tier == "deep"))


def _probs(result: ScoreResult | None) -> Probs | None:
    return None if result is None or result.probs is None else Probs.normalised(*result.probs)


PUBLISHED_DIGITS = 12   # probabilities are published to 1e-12: arithmetic noise below that never shows


def _published(probs: Probs | None) -> Probs | None:
    return None if probs is None else Probs(*(round(p, PUBLISHED_DIGITS) for p in probs.as_tuple()))


class DeadlineGate:
    """The cost of scoring one request (a moving average) and which requests can still make their deadline."""

    def __init__(self, smoothing: float = 0.2) -> None:
        self.smoothing = smoothing
        self.ms_per_request: float | None = None

    def split(self, requests: list[InferenceRequest], now_ns: int) -> tuple[list, list]:
        """(live, late): the most valuable requests that all still finish by their deadlines, run earliest
        deadline first (`value_first`); without values, earliest deadlines first."""
        return value_first(requests, now_ns, int((self.ms_per_request or 0.0) * 1e6))

    def observe(self, computed: int, elapsed_ms: float) -> None:
        if computed:
            sample = elapsed_ms / computed
            previous = self.ms_per_request
            self.ms_per_request = sample if previous is None else previous + self.smoothing * (sample - previous)


class InferenceWorker:
    def __init__(self, kafka: KafkaSettings, redis_url: str | None, scorer: Scorer, cfg: WorkerConfig,
                 policy: FusionPolicy, tiers: TierPolicy | None = None) -> None:
        self.kafka, self.scorer, self.cfg, self.policy = kafka, scorer, cfg, policy
        self.tiers = tiers or TierPolicy()
        self.escalated = 0
        self.latest = LatestStore.from_url(redis_url, kafka.topics.prefix) if redis_url else None
        self.stopping = asyncio.Event()
        self.forecasts_published = 0
        self.warmups = 0
        self.warm_queue: deque[InferenceRequest] = deque(maxlen=MAX_QUEUED_WARMUPS)
        self.metrics = InferenceMetrics()
        self.deadlines = DeadlineGate()

    async def run(self) -> None:
        topics = self.kafka.topics
        self.scorer, stop_registry_watch = start_registry_watch(self.scorer, self.latest, topics.prefix,
                                                                self.cfg.model_dir)  # adapter hot-load
        requests_topic = topics.requests_of(self.cfg.tier)
        consumer = AIOKafkaConsumer(
            requests_topic, **self.kafka.client_kwargs(), group_id=self.cfg.group, enable_auto_commit=False,
            auto_offset_reset="earliest", max_poll_records=self.cfg.max_batch,
            session_timeout_ms=self.cfg.session_timeout_ms, heartbeat_interval_ms=1_000,
            rebalance_timeout_ms=self.cfg.session_timeout_ms, fetch_max_wait_ms=FETCH_MAX_WAIT_MS)
        producer = make_producer(self.kafka)
        await producer.start()
        consumer.subscribe([requests_topic], listener=_ReadyOnAssign())
        await consumer.start()
        self.deadletters = DeadLetters(producer, topics.deadletter, stage="inference")
        inflight: deque[tuple[asyncio.Task, dict[TopicPartition, int]]] = deque()
        try:
            while not self.stopping.is_set():
                idle_work = bool(self.warm_queue)    # warm-ups wait: poll without waiting, forecasts first
                batch = await consumer.getmany(timeout_ms=0 if idle_work else self.cfg.poll_timeout_ms,
                                               max_records=self.cfg.max_batch)
                records = [r for part in batch.values() for r in part]
                if records:     # scored while the next polls come in: their requests join the engine's steps
                    inflight.append((asyncio.create_task(self._handle(records, producer)), next_offsets(batch)))
                elif idle_work:
                    await self._warm_up_queued()
                await self._commit_done(consumer, inflight, room=self.max_inflight - 1)
        finally:
            try:
                await self._commit_done(consumer, inflight, room=0)     # finish what was taken, then commit it
            finally:
                stop_registry_watch()
                await consumer.stop()
                await producer.stop()
                if self.latest:
                    await self.latest.close()

    @property
    def max_inflight(self) -> int:
        """Polls scored at once: several where the scorer takes concurrent calls (the engine loop), else one."""
        return self.cfg.max_inflight if getattr(self.scorer, "concurrent", False) else 1

    @staticmethod
    async def _commit_done(consumer, inflight: deque, room: int) -> None:
        """Commit the offsets of the polls handled so far, oldest first and never past one still being
        handled (at least once: a crash replays what was not committed); first wait for the oldest until
        at most `room` are in flight. A poll that failed raises here."""
        oldest = [task for task, _ in inflight][:max(len(inflight) - room, 0)]
        if oldest:
            await asyncio.wait(oldest)
        offsets: dict[TopicPartition, int] = {}
        while inflight and inflight[0][0].done():
            task, polled = inflight.popleft()
            task.result()
            offsets |= polled
        if offsets:
            try:
                await consumer.commit(offsets)
            except (CommitFailedError, KafkaError) as error:   # a rebalance: the next owner answers them again
                log.warning("commit after scoring failed (%s): those requests will be answered again", error)

    async def _handle(self, records: list, producer) -> None:
        picked = time.time_ns()
        self.metrics.batch_size.observe(len(records))
        requests = []
        for record in records:
            try:
                requests.append(decode_request(record.value or b""))
            except SchemaError as error:
                self.metrics.deadletters.labels("inference", error.reason).inc()
                await self.deadletters.send(source_topic=record.topic, error=error, key=record.key,
                                            value=record.value, partition=record.partition, offset=record.offset)
        requests = self._queue_warmups(requests)
        if not requests:
            return
        requests, skipped = self.tiers.plan(requests) if self.cfg.tier == "base" else (requests, set())
        results, inference_ms = await self._score_in_time([r for r in requests if r.id not in skipped])
        by_id = {res.request_id: res for res in results if res is not None}
        results = [by_id.get(r.id) for r in requests]
        deep, deep_ms = await self._deep_path(requests, results)
        self.metrics.latency_s.observe((inference_ms + deep_ms) / 1e3)
        self.metrics.engine.observe(self.scorer)
        forecasts = [make_forecast(req, res, model=self.scorer.model_name, policy=self.policy, picked_wall_ns=picked,
                                   inference_ms=inference_ms + (deep_ms if req.id in deep else 0.0),
                                   deep=deep.get(req.id), deep_ms=deep_ms if req.id in deep else 0.0,
                                   skipped=req.id in skipped)
                     for req, res in zip(requests, results)]
        escalations = self._escalations(requests, forecasts)
        forecasts = [replace(f, escalated=True) if f.id in escalations else f for f in forecasts]
        await self._send(producer, self.kafka.topics.forecasts, [(f.symbol.encode(), f) for f in forecasts])
        await self._send(producer, self.kafka.topics.requests_deep,
                         [((r.adapter or r.symbol).encode(), r) for r in escalations.values()])
        self.forecasts_published += len(forecasts)
        self.escalated += len(escalations)
        self.metrics.observe_forecasts(forecasts)
        await self._store_latest(forecasts, {r.id: r.tier_prompt for r in requests})

    async def _send(self, producer, topic: str, keyed: list[tuple[bytes, object]]) -> None:
        """Send every record and wait for all deliveries (forecasts go out before their escalations)."""
        await asyncio.gather(*[await producer.send(topic, encode(record), key=key) for key, record in keyed])

    def _escalations(self, requests: list[InferenceRequest], forecasts: list[Forecast]) -> dict[str, InferenceRequest]:
        """The base tier's forecasts that the deep tier should answer again, as deep requests by id."""
        if self.cfg.tier != "base" or not self.cfg.escalate:
            return {}
        now_ns, out = time.time_ns(), {}
        for request, forecast in zip(requests, forecasts):
            if forecast.status == "ok" and self.tiers.escalation_reasons(
                    request.numeric, forecast.llm, forecast.review, request.value or 0.0):
                out[request.id] = self.tiers.deep_request(request, forecast.llm, now_ns)
        return out

    def _queue_warmups(self, requests: list[InferenceRequest]) -> list[InferenceRequest]:
        """Warm-ups (predictive buffering: the known head of a coming trigger's prompt) wait in the warm
        queue until no forecast request is due, so they never delay one; a forecast of the symbol at or
        after a queued warm-up's time makes it useless (dropped). Returns the forecast requests."""
        forecasts = [r for r in requests if r.kind != "warmup"]
        if self.scorer.prefix_caching:
            self.warm_queue.extend(r for r in requests if r.kind == "warmup")
            latest = {}
            for r in forecasts:
                latest[r.symbol] = max(r.ts_ns, latest.get(r.symbol, r.ts_ns))
            if latest:
                kept = [w for w in self.warm_queue if w.ts_ns > latest.get(w.symbol, w.ts_ns - 1)]
                self.warm_queue = deque(kept, maxlen=MAX_QUEUED_WARMUPS)
        return forecasts

    async def _warm_up_queued(self) -> None:
        """Prefill the queued warm-ups still in time, at most MAX_WARMUP_BATCH in one engine call (their
        offsets are committed: a lost warm-up only costs latency), so that each trigger's prompt finds
        its head cached; answers nothing."""
        now_ns, batch = time.time_ns(), []
        while self.warm_queue and len(batch) < MAX_WARMUP_BATCH:
            request = self.warm_queue.popleft()
            if request.deadline_wall_ns > now_ns:
                batch.append(request)
        if batch:
            await self._score(batch, background=True)
            self.warmups += len(batch)

    async def _score_in_time(self, requests: list[InferenceRequest]) -> tuple[list[ScoreResult | None], float]:
        """Requests that would finish past their deadline (at the measured cost per request) are answered
        as expired before spending model time on them: under overload the worker sheds the excess instead
        of computing answers that expire on the way out."""
        live, late = self.deadlines.split(requests, time.time_ns())
        scored, inference_ms = await self._score(live)
        self.deadlines.observe(len(live), inference_ms)
        by_id = {r.id: res for r, res in zip(live, scored)} | {r.id: ScoreResult(r.id, None, expired=True) for r in late}
        return [by_id[r.id] for r in requests], inference_ms

    async def _deep_path(self, requests: list[InferenceRequest],
                         results: list[ScoreResult | None]) -> tuple[dict[str, ScoreResult], float]:
        """Divergent forecasts get a second opinion from the deep adapter (when one is configured)."""
        adapter = self.policy.deep_adapter
        divergent = [r for r, res in zip(requests, results) if self.policy.diverges(r.numeric, _probs(res))]
        if adapter is None or not divergent:
            return {}, 0.0
        second, deep_ms = await self._score(divergent, adapter=adapter)
        return {r.id: res for r, res in zip(divergent, second) if res is not None}, deep_ms

    async def _score(self, requests: list[InferenceRequest], adapter: str | None = None,
                     background: bool = False) -> tuple[list[ScoreResult | None], float]:
        items = [ScoreItem(r.id, r.tier_prompt, adapter or r.adapter, r.deadline_wall_ns, background, r.value or 0.0)
                 for r in requests]
        started = time.perf_counter()
        try:
            results: list[ScoreResult | None] = list(await asyncio.to_thread(self.scorer.score, items))
        except Exception:  # a model failure must not stop forecasts: publish numeric-only, marked
            log.exception("scoring %d requests failed; publishing numeric-only forecasts", len(items))
            results = [None] * len(items)
        return results, (time.perf_counter() - started) * 1e3

    async def _store_latest(self, forecasts: list[Forecast], prompts: dict[str, str]) -> None:
        """Each forecast, with the prompt it was scored on (by request id: `finllm explain` reads it)."""
        if not self.latest:
            return
        try:
            for forecast in forecasts:
                await self.latest.store(forecast, prompts.get(forecast.id))
        except Exception as error:  # Redis down: forecasts still flow; the latest view catches up later
            self.metrics.redis_errors.labels("latest").inc()
            log.warning("could not store latest forecasts in Redis: %s", error)


def next_offsets(batch: dict[TopicPartition, list]) -> dict[TopicPartition, int]:
    """The offsets to commit once a poll's records are all handled."""
    return {tp: records[-1].offset + 1 for tp, records in batch.items() if records}


class _ReadyOnAssign(ConsumerRebalanceListener):
    async def on_partitions_revoked(self, revoked) -> None:
        return None

    async def on_partitions_assigned(self, assigned) -> None:
        log.info("assigned %s", sorted((tp.topic, tp.partition) for tp in assigned))
        if assigned:
            mark_ready()


async def main_async() -> None:
    kafka = KafkaSettings.from_env()
    cfg = WorkerConfig.from_env()
    scorer = configured_scorer(cfg)
    worker = InferenceWorker(kafka, os.environ.get("FINLLM_REDIS_URL"), scorer, cfg,
                             FusionPolicy.from_env(dict(cfg.adapters)), TierPolicy.from_env())
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.stopping.set)
    log.info("inference worker up: tier %s, model %s, engine %s", cfg.tier, scorer.model_name, cfg.engine)
    observing = asyncio.create_task(run_observability(
        worker.metrics, kafka, {cfg.group: [kafka.topics.requests_of(cfg.tier)]},
        extra=lambda: {"model": scorer.model_name, "engine": cfg.engine, "tier": cfg.tier}))
    try:
        async with contextlib.AsyncExitStack() as http:
            if os.environ.get(HTTP_PORT_ENV):     # the HTTP API beside Kafka: one engine, forecasts first
                worker.scorer = await http.enter_async_context(serve_http(scorer, cfg, worker.metrics.registry,
                                                                          worker.latest))
            elif cfg.engine == "paged":           # the engine in its own thread: polls share its steps
                from inference.api.loop import looping

                worker.scorer = http.enter_context(looping(scorer))
            await worker.run()
    finally:
        observing.cancel()
        await asyncio.gather(observing, return_exceptions=True)
        scorer.close()


@contextlib.asynccontextmanager
async def serve_http(scorer: Scorer, cfg: WorkerConfig, registry, latest: LatestStore | None = None):
    """The OpenAI-compatible API (inference.api) on FINLLM_HTTP_PORT over the worker's engine; yields the
    scorer the worker then scores with (through the same engine loop). `latest`: the worker's store of
    the latest forecasts, which /v1/explain reads."""
    from inference.api.protocol import ApiSettings
    from inference.api.server import ApiMetrics, serving

    if cfg.engine != "paged":
        raise SystemExit(f"{HTTP_PORT_ENV} needs FINLLM_ENGINE=paged (the engine that serves HTTP)")
    async with serving(scorer, ApiSettings.from_env(), ApiMetrics(registry), latest) as (_, url, shared):
        log.info("HTTP API on %s/v1", url)
        yield shared


def main() -> None:
    logging.basicConfig(level=os.environ.get("FINLLM_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    asyncio.run(main_async())


if __name__ == "__main__":
    main()
