"""A supervised worker started `idle` runs under Linux's SCHED_IDLE policy (it only gets cores nothing else
wants: the demo's deep tier beside the base tier); one started normally keeps the normal policy."""
from __future__ import annotations

import os

import pytest

from streams.processes import WorkerProcess

pytestmark = pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="SCHED_IDLE is Linux's")


@pytest.mark.parametrize("idle, policy", [(True, "SCHED_IDLE"), (False, "SCHED_OTHER")])
def test_an_idle_worker_runs_under_sched_idle(tmp_path, idle, policy):
    module = tmp_path / "sleeper.py"
    module.write_text("import time\ntime.sleep(30)\n")
    env = dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    worker = WorkerProcess("sleeper", "sleeper", env, tmp_path, idle=idle)
    try:
        assert os.sched_getscheduler(worker.pid) == getattr(os, policy)
    finally:
        worker.stop(timeout_s=5)
