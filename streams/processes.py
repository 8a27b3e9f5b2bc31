"""Worker processes started by a supervisor (`finllm demo`, tests): start, wait until ready, stop cleanly."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

POLL_S = 0.1


class WorkerFailed(RuntimeError):
    """A worker exited or did not become ready in time; the message holds its log tail."""


def _schedule_idle() -> None:
    """SCHED_IDLE: the process runs only when no normal process wants the core (nice 19 where unsupported)."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        os.nice(19)


class WorkerProcess:
    """`python -m MODULE` in its own process group, with `workdir` as its FINLLM_WORK_DIR, logging to
    `workdir/NAME.log`; ready once it creates the file named by FINLLM_READY_FILE. `idle` runs it only on
    cores nothing else wants (Linux SCHED_IDLE, else nice 19): a latency-tolerant worker sharing cores with
    latency-bound ones."""

    def __init__(self, name: str, module: str, env: dict[str, str], workdir: Path,
                 idle: bool = False) -> None:
        self.name = name
        workdir = workdir.resolve()
        self.log_path = workdir / f"{name}.log"
        self.ready_path = workdir / f"{name}.ready"
        self.ready_path.unlink(missing_ok=True)
        env = dict(env, FINLLM_READY_FILE=str(self.ready_path), FINLLM_WORK_DIR=str(workdir), PYTHONUNBUFFERED="1")
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen([sys.executable, "-m", module], env=env, stdout=log,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            start_new_session=True,
                                            preexec_fn=_schedule_idle if idle else None)

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_ready(self, timeout_s: float) -> float:
        """Seconds until ready; raises WorkerFailed if the process dies or the time runs out."""
        started = time.monotonic()
        while not self.ready_path.exists():
            self.check_alive()
            if time.monotonic() - started > timeout_s:
                raise WorkerFailed(f"{self.name} not ready after {timeout_s:.0f} s:\n{self.log_tail()}")
            time.sleep(POLL_S)
        return time.monotonic() - started

    def check_alive(self) -> None:
        """Raises WorkerFailed (with the log tail) if the process has exited."""
        if self.process.poll() is not None:
            raise WorkerFailed(f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}")

    def stop(self, timeout_s: float = 20.0) -> int:
        """SIGTERM, then SIGKILL to the whole group if it has not exited in time; returns the exit code."""
        if self.process.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.process.wait(5)
        self._signal(signal.SIGKILL)  # anything the worker itself spawned
        return self.process.returncode

    def kill(self) -> None:
        """kill -9, as a crash would."""
        self._signal(signal.SIGKILL)
        self.process.wait(5)

    def _signal(self, sig: signal.Signals) -> None:
        try:
            os.killpg(self.process.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"
