"""Soak: replay a large tape as fast as possible for several minutes (`pytest -m soak`).

Proves: no forecast is lost (every trigger of the tape gets one); the consumer lag of the agents and
the inference groups returns to zero after the replay; the resident memory of every process (Tansu,
Redis, agents, inference) stays flat after warm-up: it grows by at most GROWTH_BOUND (and
GROWTH_FLOOR_MB) from the end of the first third of the run to its end. Figures are printed.
"""
from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from agents.config import AgentsConfig
from agents.offline import fired_triggers
from streams.lag import LagProbe
from streams.replay import replay
from streams.synth import write_synth_tape
from streams.tape import Tape
from tests.reliability.pipeline import Pipeline, Services

pytestmark = [pytest.mark.soak, pytest.mark.integration]
SYMBOLS, MINUTES = int(os.environ.get("FINLLM_SOAK_SYMBOLS", 20)), int(os.environ.get("FINLLM_SOAK_MINUTES", 120))
GROWTH_BOUND = 0.10          # after warm-up, RSS may grow by 10 % ...
GROWTH_FLOOR_MB = 40.0       # ... or 40 MB, whichever is larger (allocator noise on small processes)
SAMPLE_S = 2.0


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


async def sample_memory(pids: dict[str, int], samples: dict[str, list[float]], stopping: asyncio.Event) -> None:
    while not stopping.is_set():
        for name, pid in pids.items():
            if (mb := rss_mb(pid)) is not None:
                samples.setdefault(name, []).append(mb)
        await asyncio.sleep(SAMPLE_S)


async def total_lag(pipeline: Pipeline) -> dict[str, int]:
    topics, env = pipeline.kafka.topics, pipeline.env
    probe = LagProbe(pipeline.kafka)
    try:
        agents = await probe.lag(env["FINLLM_AGENTS_APP_ID"], [topics.ticks, topics.symbol_news, topics.news])
        inference = await probe.lag(env["FINLLM_INFERENCE_GROUP"], [topics.requests])
        return {"agents": sum(p.messages for p in agents), "inference": sum(p.messages for p in inference)}
    finally:
        await probe.close()


async def soak(tape: Tape, services: Services, pipeline: Pipeline, ids: set[str]) -> dict:
    stopping, samples = asyncio.Event(), {}
    async with pipeline.running() as collector:
        pids = {"tansu": services.kafka.pid, "redis": services.redis.pid,
                **{name: worker.pid for name, worker in pipeline.workers.items()}}
        sampling = asyncio.create_task(sample_memory(pids, samples, stopping))
        started = time.monotonic()
        try:
            stats = await replay(tape, pipeline.kafka, speed=None, progress=False)
            complete = await collector.wait_for(ids, 1200.0)
            await asyncio.sleep(3.0)                          # a commit interval or two
            lag = await total_lag(pipeline)
        finally:
            stopping.set()
            await sampling
    return {"stats": stats, "complete": complete, "lag": lag, "samples": samples, "collector": collector,
            "wall_s": time.monotonic() - started}


def test_soak_memory_flat_lag_zero_nothing_lost(tmp_path):
    write_synth_tape(tmp_path / "tape", SYMBOLS, MINUTES, seed=5)
    tape = Tape.read(tmp_path / "tape")
    ids = {f.id for f in fired_triggers(tape.events(), AgentsConfig())}
    services = Services(tmp_path).start()
    try:
        run = asyncio.run(soak(tape, services, Pipeline(services, tmp_path), ids))
    finally:
        services.stop()
    growth = {}
    for name, series in run["samples"].items():
        warm = series[len(series) // 3]
        growth[name] = (warm, max(series[len(series) // 3:]), series[-1])
    print(f"\nsoak: {run['stats'].events} events replayed in {run['stats'].duration_s:.0f} s, {len(ids)} triggers, "
          f"all forecast after {run['wall_s']:.0f} s: {run['complete']}; lag after: {run['lag']}; RSS MB "
          f"(after warm-up, peak, end): " + ", ".join(f"{n} {w:.0f}/{p:.0f}/{e:.0f}" for n, (w, p, e) in growth.items()))
    assert run["complete"] and ids <= run["collector"].by_id.keys()
    assert run["lag"] == {"agents": 0, "inference": 0}
    for name, (warm, peak, _) in growth.items():
        assert peak - warm <= max(GROWTH_BOUND * warm, GROWTH_FLOOR_MB), (name, warm, peak)
