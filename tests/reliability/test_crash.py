"""kill -9 the inference worker, then the agents worker, in the middle of a replay; restart each.

Proves: every trigger of the tape still gets its forecast; every forecast copy on the wire equals
the undisturbed one (latency aside); duplicates on the wire stay bounded; each restarted worker
resumes within a bound (printed). The inference worker commits only after publishing (a crash
replays its uncommitted requests); the agents rebuild their windows and held triggers from the
Redis checkpoint (agents.recovery), so nothing they held is lost and no window comes back short.
"""
from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest

from streams.consumer import ForecastCollector
from streams.replay import replay
from streams.tape import Tape
from tests.reliability.pipeline import Pipeline, Services, same

pytestmark = [pytest.mark.reliability, pytest.mark.integration]
SPEED = 30.0                  # the 12-minute tape replays in 24 s
# A restarted worker resumes within: process start (importing torch and transformers is 15-30 s on a
# 2-core box) + group rejoin (~3 s; the session timeout of 6 s bounds the wait for the dead member).
RESUME_BOUND_S = 60.0


async def crash_and_restart(pipeline: Pipeline, collector: ForecastCollector, name: str) -> dict[str, float]:
    """kill -9, start again at once; seconds from the kill until ready and until the next forecast."""
    killed_at = time.monotonic()
    pipeline.workers[name].kill()
    worker = pipeline.start(name)
    await asyncio.to_thread(worker.wait_ready, 120.0)
    ready_at = time.monotonic()
    first = await collector.first_new_after(ready_at, RESUME_BOUND_S)
    return {"ready_s": ready_at - killed_at, "first_forecast_s": (first or float("inf")) - killed_at}


async def run_with_crashes(tape: Tape, pipeline: Pipeline, ids: set[str]) -> tuple[ForecastCollector, dict]:
    async with pipeline.running() as collector:
        replaying = asyncio.create_task(replay(tape, pipeline.kafka, speed=SPEED, progress=False))
        await asyncio.sleep(4.0)
        inference = asyncio.create_task(crash_and_restart(pipeline, collector, "inference"))
        await asyncio.sleep(4.0)           # the agents die while the inference worker is still starting
        agents = asyncio.create_task(crash_and_restart(pipeline, collector, "agents"))
        resume = {"inference": await inference, "agents": await agents}
        await replaying
        await collector.wait_for(ids, 120.0)
        await asyncio.sleep(1.0)                       # late duplicates show up too
    return collector, resume


def test_crashes_lose_nothing_and_change_nothing(tape, expected, tmp_path):
    """Bounds: duplicates on the wire <= half the triggers; each worker forecasts again within RESUME_BOUND_S."""
    services = Services(tmp_path).start()
    try:
        pipeline = Pipeline(services, tmp_path)
        collector, resume = asyncio.run(run_with_crashes(tape, pipeline, set(expected)))
    finally:
        services.stop()
    got = collector.by_id
    copies = Counter(f.id for _, f in collector.copies)
    print(f"\ncrash test: {len(expected)} triggers, {len(collector.copies)} forecast records on the wire, "
          f"{len(collector.copies) - len(got)} duplicates; resume after kill -9: "
          + ", ".join(f"{n} ready {r['ready_s']:.1f} s, first forecast {r['first_forecast_s']:.1f} s"
                      for n, r in resume.items()))
    assert set(got) == set(expected), f"missing {set(expected) - set(got)}, unexpected {set(got) - set(expected)}"
    changed = [f.id for _, f in collector.copies if not same(f, expected[f.id])]
    assert not changed, f"{len(changed)} forecast copies differ from the undisturbed run, e.g. {changed[:3]}"
    assert sum(copies.values()) - len(copies) <= len(expected) // 2
    for name, figures in resume.items():
        assert figures["first_forecast_s"] < RESUME_BOUND_S, (name, figures)
