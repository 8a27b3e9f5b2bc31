"""The Faust app: the agents worker's lifecycle, timers and producer, wiring Kafka to the pure processor.

Records come in through the `Intake` (agents.intake: one consumer group over `news`, `ticks` and
`symbol-news`, read in batches, offsets committed after each batch's outputs are delivered) and are
handled by the `Stage` (agents.stage: news routing, the per-symbol `Processor`, requests, dead letters).
Faust runs the intake as a service, the trigger-release and checkpoint timer, the observability task,
and produces every output.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import faust
from faust.app.base import BootStrategy

from agents.audit import AuditChain, AuditWriter, config_hash, new_producer_id
from agents.config import AgentsConfig
from agents.intake import Intake
from agents.news_dedup import NewsScreen
from agents.recovery import CheckpointStore, Recovery
from agents.stage import EventGuard, Sinks, Stage
from agents.transport import broker_url
from streams.health import mark_ready
from agents.metrics import AgentsMetrics
from streams.metrics import run_observability
from streams.settings import KafkaSettings

__all__ = ["EventGuard", "create_app", "faust_settings"]
log = logging.getLogger("finllm.agents")
REBALANCE_TIMEOUT_S = 3.0
RELEASE_INTERVAL_S = 0.1
SESSION_TIMEOUT_S = 6.0    # a crashed worker's partitions go to a restarted one within this (measured: ~8 s)


def faust_settings(kafka: KafkaSettings, *, web_port: int, datadir: Path) -> dict[str, Any]:
    """Settings that make a worker join fast and behave on Tansu 0.6 as on Apache Kafka.

    Measured there: joining a group takes about half the session timeout whatever the rebalance timeout;
    idempotent and transactional producers fail (InitProducerId), so processing is at-least-once with
    idempotent ids; Faust declares no topics (every topic is pre-created: Tansu would auto-create 4
    partitions) and elects no leader. `datadir` is Faust's own folder (its default, `<app_id>-data` in the
    current directory, would litter wherever the worker was started).
    """
    return dict(
        broker=broker_url(kafka.bootstrap), datadir=str(datadir), web_enabled=False, web_port=web_port,
        web_host="127.0.0.1", topic_disable_leader=True, topic_allow_declare=False,
        broker_rebalance_timeout=REBALANCE_TIMEOUT_S, broker_session_timeout=SESSION_TIMEOUT_S,
        broker_heartbeat_interval=1.0, broker_commit_interval=0.5, consumer_auto_offset_reset="earliest",
        producer_acks=-1, producer_linger_ms=2, stream_wait_empty=False, table_cleanup_interval=3600.0,
    )


class _NoConsumerBoot(BootStrategy):
    enable_kafka_consumer = False      # the intake consumes; Faust would subscribe to nothing and fail


def create_app(kafka: KafkaSettings, cfg: AgentsConfig, *, web_port: int, datadir: Path,
               app_id: str = "finllm-agents", redis_url: str | None = None) -> faust.App:
    """`app_id` is also the consumer group of the intake; `redis_url` keeps the checkpoints that let a
    restarted worker rebuild its state (agents.recovery)."""
    app = faust.App(app_id, **faust_settings(kafka, web_port=web_port, datadir=datadir))
    app.boot_strategy = _NoConsumerBoot(app)
    topics = kafka.topics

    def sender(name: str) -> Any:
        topic = app.topic(name, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
        return topic.send

    news_screen = NewsScreen.from_env(topics.prefix)
    metrics = AgentsMetrics()
    recovery = Recovery(kafka, cfg, app_id, CheckpointStore.from_url(
        redis_url, topics.prefix, app_id, metrics.redis_errors.labels("checkpoint")) if redis_url else None)
    audit_send = sender(topics.audit)
    audit = AuditWriter(AuditChain(new_producer_id(app_id)), lambda key, value: audit_send(key=key, value=value))
    stage = Stage(cfg, topics, Sinks(sender(topics.requests), sender(topics.symbol_news), sender(topics.deadletter)),
                  recovery=recovery, audit=audit, news_screen=news_screen, metrics=metrics,
                  settings_hash=config_hash(cfg, news_screen.policy))

    def assigned(partitions: dict[str, list[int]]) -> None:
        log.info("assigned %s partitions %s", topics.ticks, partitions.get(topics.ticks, []))
        mark_ready()

    app.service(Intake(kafka, app_id, [topics.news, topics.ticks, topics.symbol_news], stage.handle, assigned,
                       session_timeout_s=SESSION_TIMEOUT_S, rebalance_timeout_s=REBALANCE_TIMEOUT_S,
                       hold_back=stage.hold_back))

    @app.timer(RELEASE_INTERVAL_S)
    async def release() -> None:
        """Triggers waiting for news that no watermark announces go after the grace period."""
        await stage.release()
        await recovery.save(stage.processor)
        metrics.observe_buffers(sum(len(s.held) for s in stage.processor.states.values()), len(stage.processor.states))

    @app.task
    async def observe() -> None:
        """Metrics endpoint, Redis heartbeat and this group's lag, for the worker's lifetime."""
        await run_observability(metrics, kafka, {app_id: [topics.ticks, topics.symbol_news, topics.news]})

    return app
