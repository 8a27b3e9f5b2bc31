"""Embedded Tansu and Redis: they answer real requests and leave nothing behind."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from aiokafka import AIOKafkaClient

from streams.embedded import (
    EmbeddedKafka, EmbeddedRedis, EmbeddedServiceError, EmbeddedStack, ServiceConfig,
)
from streams.ports import port_is_free

pytestmark = pytest.mark.integration
REPO_ROOT = Path(__file__).resolve().parents[2]


def _process_alive(pid: int) -> bool:
    """True while `pid` runs; a zombie awaiting its reaper counts as dead."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _wait_until_dead(pid: int, timeout_s: float) -> bool:
    deadline_s = time.monotonic() + timeout_s
    while time.monotonic() < deadline_s:
        if not _process_alive(pid):
            return True
        time.sleep(0.05)
    return False


async def _broker_ids(bootstrap: str) -> list[int]:
    client = AIOKafkaClient(bootstrap_servers=bootstrap)
    await client.bootstrap()
    try:
        return [broker.nodeId for broker in client.cluster.brokers()]
    finally:
        await client.close()


def test_kafka_answers_metadata_then_frees_port_and_pid(tmp_workdir: Path) -> None:
    with EmbeddedKafka(ServiceConfig(tmp_workdir)) as kafka:
        port, pid = kafka.port, kafka.pid
        assert kafka.bootstrap == f"127.0.0.1:{port}"
        assert len(asyncio.run(_broker_ids(kafka.bootstrap))) == 1
    assert not _process_alive(pid)
    assert port_is_free(port)
    assert "listening on: tcp://127.0.0.1" in (tmp_workdir / "tansu.log").read_text()


def test_kafka_stops_promptly_while_a_client_is_still_connected(tmp_workdir: Path) -> None:
    kafka = EmbeddedKafka(ServiceConfig(tmp_workdir)).start()
    client = socket.create_connection(("127.0.0.1", kafka.port))  # Tansu waits on it
    started_s = time.monotonic()
    port = kafka.port
    kafka.stop()
    client.close()
    assert time.monotonic() - started_s < 3
    assert port_is_free(port)


def test_redis_answers_commands_then_frees_port_and_pid(tmp_workdir: Path) -> None:
    with EmbeddedRedis(ServiceConfig(tmp_workdir)) as server:
        port, pid = server.port, server.pid
        client = redis.Redis.from_url(server.url)
        client.set("k", "v")
        assert client.get("k") == b"v"
        assert client.config_get("save") == {"save": ""}
        client.close()
    assert not _process_alive(pid)
    assert port_is_free(port)


def test_stack_starts_both_and_stops_both(tmp_workdir: Path) -> None:
    with EmbeddedStack.start(tmp_workdir) as stack:
        pids = [stack.kafka.pid, stack.redis.pid]
        assert stack.redis_url.startswith("redis://127.0.0.1:")
        assert redis.Redis.from_url(stack.redis_url).ping()
        assert asyncio.run(_broker_ids(stack.bootstrap))
    assert not any(_process_alive(pid) for pid in pids)


def test_stop_is_idempotent_and_restart_is_refused_while_running(tmp_workdir: Path) -> None:
    server = EmbeddedRedis(ServiceConfig(tmp_workdir)).start()
    with pytest.raises(EmbeddedServiceError, match="already started"):
        server.start()
    server.stop()
    server.stop()
    with pytest.raises(EmbeddedServiceError, match="not running"):
        _ = server.url


def test_taken_port_fails_with_log_tail(tmp_workdir: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        config = ServiceConfig(tmp_workdir, port=taken, startup_timeout_s=5)
        with pytest.raises(EmbeddedServiceError, match="(?s)exited during startup.*in use"):
            EmbeddedRedis(config).start()


class _NeverReadyRedis(EmbeddedRedis):
    def _answers(self, port: int) -> bool:
        return False


def test_startup_timeout_names_the_service_and_shows_its_log(tmp_workdir: Path) -> None:
    config = ServiceConfig(tmp_workdir, startup_timeout_s=0.5)
    with pytest.raises(EmbeddedServiceError, match="(?s)not ready after 0.5s.*Ready to accept"):
        _NeverReadyRedis(config).start()


_ORPHAN_SCRIPT = """
import os, sys
from pathlib import Path
from streams.embedded import EmbeddedKafka, EmbeddedRedis, ServiceConfig
workdir = Path(sys.argv[1])
pids = [cls(ServiceConfig(workdir)).start().pid for cls in (EmbeddedKafka, EmbeddedRedis)]
print(*pids, flush=True)
os._exit(0)  # die without stopping anything, as a crash would
"""


def test_services_die_with_a_crashed_parent(tmp_workdir: Path) -> None:
    parent = subprocess.run(
        [sys.executable, "-c", _ORPHAN_SCRIPT, str(tmp_workdir)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=True)
    pids = [int(pid) for pid in parent.stdout.split()]
    assert len(pids) == 2
    assert all(_wait_until_dead(pid, timeout_s=5) for pid in pids)
