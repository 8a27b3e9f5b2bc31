"""Shared fixtures: one real Kafka (Tansu) and Redis per session, unique topics per test.

Set FINLLM_KAFKA_BOOTSTRAP / FINLLM_REDIS_URL to use already running services
instead of the embedded ones, FINLLM_MODEL to run the model-serving tests on another model than tiny.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

# The tests serve the tiny fixture model (built offline in a second) unless FINLLM_MODEL names another;
# the tests about the real default model name it.
os.environ.setdefault("FINLLM_MODEL", "tiny")

from streams.embedded import EmbeddedKafka, EmbeddedRedis, ServiceConfig


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """host:port of a Kafka-compatible broker shared by the whole session."""
    external = os.environ.get("FINLLM_KAFKA_BOOTSTRAP")
    if external:
        yield external
        return
    workdir = tmp_path_factory.mktemp("kafka")
    with EmbeddedKafka(ServiceConfig(workdir)) as kafka:
        yield kafka.bootstrap


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """redis:// URL of a Redis server shared by the whole session."""
    external = os.environ.get("FINLLM_REDIS_URL")
    if external:
        yield external
        return
    workdir = tmp_path_factory.mktemp("redis")
    with EmbeddedRedis(ServiceConfig(workdir)) as redis:
        yield redis.url


@pytest.fixture
def topic_prefix() -> str:
    """A prefix no other test uses, e.g. 't1a2b3c4d.'; also fits group ids."""
    return f"t{uuid.uuid4().hex[:8]}."


@pytest.fixture
def tmp_workdir(tmp_path: Path) -> Path:
    """A fresh directory for this test's logs and scratch files."""
    workdir = tmp_path / "work"
    workdir.mkdir()
    return workdir
