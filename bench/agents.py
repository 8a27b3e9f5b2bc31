"""Agents benchmark: ticks/s through decoding, features and alignment, and trigger-to-forecast latency.

    python bench/agents.py [--quick] [--model NAME_OR_FOLDER]

1. `pure`: the agents' per-tick work in one process, no Kafka: decode tick bundles (validation),
   apply each tick to its symbol's window and trigger clock (`agents.processor.Processor`).
2. `pipeline`: the real thing: embedded broker, the same tape replayed into it in 1 s tick bundles,
   then one agents worker process started on that backlog; ticks/s = ticks / time from the worker
   being ready until the last trigger's inference request is out (warm-up requests are not counted;
   the last trigger also waits for the tape's final news watermark, so this is a lower bound).
3. `buffering`: trigger-to-forecast latency over the whole pipeline (3 symbols x 8 minutes, 20x real
   time; `--buffering-minutes`, `--buffering-speed`), served by our paged engine with the product's default model (SmolLM2-135M-Instruct, its shipped
   adapters, the engine's default dtype for this processor), in three configurations of the same code:
   - `buffered`: warm-ups on (FINLLM_WARMUP=1) and the engine's prefix cache on;
   - `cache_only`: no warm-ups, prefix cache on (a trigger reuses what earlier prompts of the symbol left);
   - `unbuffered`: neither (FINLLM_PREFIX_CACHING=0): every prompt is prefilled whole at its trigger,
     the naive system the issue's target compares against.
   Trigger-to-forecast is a forecast's `latency.total_ms`: from the moment its trigger's ticks were
   complete (the first tick after T arrived) to its publication, so it includes the wait for the news
   stream to pass T; medians are also given per trigger kind.
The last line printed is one JSON object with every figure.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

import orjson
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agents.config import AgentsConfig  # noqa: E402
from agents.offline import fired_triggers  # noqa: E402
from agents.processor import Processor  # noqa: E402
from schemas import decode_ticks  # noqa: E402
from streams.replay import TickBundler, record_bytes  # noqa: E402
from streams.synth import synth_tape  # noqa: E402

BUNDLE_MS = 1000


def bundles_of(tape) -> list[bytes]:
    bundler, out = TickBundler(BUNDLE_MS * 1_000_000), []
    for kind, row in tape.events():
        out += [value for _, value in bundler.due(row["ts_ns"])]
        if kind == "tick":
            bundler.add(row)
    return out + [value for _, value in bundler.due(None)]


def bench_pure(tape) -> dict:
    records, cfg = bundles_of(tape), AgentsConfig()
    processor = Processor(cfg, gated=False)
    started = time.perf_counter()
    fired = 0
    for record in records:
        ticks, _ = decode_ticks(record)
        for tick in ticks:
            fired += len(processor.on_tick(tick, 0))
    elapsed = time.perf_counter() - started
    singles = [record_bytes(row) for kind, row in tape.events() if kind == "tick"]
    started = time.perf_counter()
    processor = Processor(cfg, gated=False)
    for record in singles:
        for tick in decode_ticks(record)[0]:
            processor.on_tick(tick, 0)
    single_s = time.perf_counter() - started
    return {"pure_ticks_per_s": round(tape.ticks.height / elapsed), "pure_triggers": fired,
            "pure_single_record_ticks_per_s": round(tape.ticks.height / single_s), "bundles": len(records)}


async def bench_pipeline(tape, workdir: Path) -> dict:
    from aiokafka import AIOKafkaConsumer

    from streams.admin import ensure_topics
    from streams.embedded import EmbeddedStack
    from streams.processes import WorkerProcess
    from streams.replay import replay
    from streams.settings import KafkaSettings
    from streams.topics import Topics

    expected = {f.id for f in fired_triggers(tape.events(), AgentsConfig())}
    with EmbeddedStack.start(workdir) as stack:
        kafka = KafkaSettings(stack.bootstrap, Topics("", 4))
        await ensure_topics(kafka.bootstrap, kafka.topics.all())
        stats = await replay(tape, kafka, bundle_ms=BUNDLE_MS, progress=False)   # the backlog, first
        consumer = AIOKafkaConsumer(kafka.topics.requests, bootstrap_servers=kafka.bootstrap, group_id=None,
                                    auto_offset_reset="earliest", fetch_max_wait_ms=20)
        await consumer.start()
        agents = WorkerProcess("agents", "agents.worker", dict(os.environ, **kafka.env()), workdir)
        try:
            await asyncio.to_thread(agents.wait_ready, 120)
            started = time.monotonic()   # the worker drains the backlog from here on
            seen, last = set(), started
            while len(seen) < len(expected) and time.monotonic() - started < 600:
                batch = await consumer.getmany(timeout_ms=200)
                ids = {_forecast_id(r.value) for part in batch.values() for r in part} - {None}
                if ids - seen:
                    seen, last = seen | ids, time.monotonic()
            await consumer.stop()
        finally:
            agents.stop()
    elapsed = last - started
    return {"ticks_per_s": round(tape.ticks.height / elapsed), "pipeline_s": round(elapsed, 2),
            "replay_s": round(stats.duration_s, 2), "requests": len(seen & expected), "triggers": len(expected)}


def _forecast_id(value: bytes) -> str | None:
    """The id of a forecast request (warm-ups are not counted: they are not triggers)."""
    request = orjson.loads(value)
    return None if request.get("kind") == "warmup" else request["id"]


def bench_buffering(workdir: Path, minutes: float, speed: float, model: str | None) -> dict:
    from agents.lab.demo import DemoOptions, run_demo
    from inference.checkpoints import DEFAULT_MODEL, resolve_model_dir
    from streams.synth import write_synth_tape

    model = model or DEFAULT_MODEL
    resolve_model_dir(model)   # converted before the runs, so that no run's start-up includes it
    write_synth_tape(workdir / "tape", 3, minutes, seed=4)
    figures = {"model": model, "buffering_minutes": minutes, "buffering_speed": speed}
    runs = (("buffered", "1", "1"), ("cache_only", "0", "1"), ("unbuffered", "0", "0"))
    for label, warmup, caching in tqdm(runs, desc="pipeline runs", unit="run", disable=not sys.stderr.isatty()):
        os.environ["FINLLM_WARMUP"], os.environ["FINLLM_PREFIX_CACHING"] = warmup, caching
        report = run_demo(DemoOptions(workdir / label, workdir / "tape", speed=speed, partitions=2,
                                      engine="paged", model=model, timeout_s=300))
        figures[f"trigger_to_forecast_ms_p50_{label}"] = report["latency_ms"]["p50"]
        figures[f"trigger_to_forecast_ms_p99_{label}"] = report["latency_ms"]["p99"]
        figures[f"inference_ms_p50_{label}"] = report["inference_ms"]["p50"]
        figures[f"forecasts_{label}"] = report["forecasts"]
        figures[f"expired_{label}"] = report["status"].get("expired", 0)
        figures |= _by_trigger(workdir / label / "forecasts.parquet", label)
    for name in ("FINLLM_WARMUP", "FINLLM_PREFIX_CACHING"):
        os.environ.pop(name)
    buffered = figures["trigger_to_forecast_ms_p50_buffered"]
    figures["buffering_speedup_p50"] = round(figures["trigger_to_forecast_ms_p50_unbuffered"] / buffered, 2)
    figures["buffering_speedup_p50_vs_cache_only"] = round(figures["trigger_to_forecast_ms_p50_cache_only"] / buffered, 2)
    return figures


def _by_trigger(path: Path, label: str) -> dict:
    """Median trigger-to-forecast per trigger kind (cadence triggers are known ahead; news ones are not)."""
    import polars as pl

    frame = pl.read_parquet(path).group_by("trigger").agg(pl.col("total_ms").median(), pl.len())
    return {f"trigger_to_forecast_ms_p50_{label}_{row['trigger']}": round(row["total_ms"], 2)
            for row in frame.iter_rows(named=True)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smaller tape (about a minute in all)")
    parser.add_argument("--symbols", type=int)
    parser.add_argument("--minutes", type=float)
    parser.add_argument("--model", help="served model for the buffering runs (default: the product's default)")
    parser.add_argument("--buffering-minutes", type=float, help="tape of the buffering runs (default: 8, 20)")
    parser.add_argument("--buffering-speed", type=float, default=20.0,
                        help="replay speed of the buffering runs: one the model keeps up with on this machine "
                             "(no expired forecasts), or the latency measures the backlog")
    args = parser.parse_args()
    symbols = args.symbols or (10 if args.quick else 40)
    minutes = args.minutes or (30 if args.quick else 60)
    tape = synth_tape(symbols, minutes, seed=1)
    from inference.engine.cpu import describe_processor

    figures = {"symbols": symbols, "minutes": minutes, "ticks": tape.ticks.height, "bundle_ms": BUNDLE_MS,
               "cpu": describe_processor()}
    figures |= bench_pure(tape)
    print(f"pure: {figures['pure_ticks_per_s']:,} ticks/s in bundles, "
          f"{figures['pure_single_record_ticks_per_s']:,} ticks/s one record each", flush=True)
    with tempfile.TemporaryDirectory() as workdir:
        figures |= asyncio.run(bench_pipeline(tape, Path(workdir)))
    print(f"pipeline: {figures['ticks_per_s']:,} ticks/s through the agents worker "
          f"({figures['requests']}/{figures['triggers']} requests)", flush=True)
    with tempfile.TemporaryDirectory() as workdir:
        figures |= bench_buffering(Path(workdir), args.buffering_minutes or (8 if args.quick else 20),
                                   args.buffering_speed, args.model)
    print(f"buffering: trigger-to-forecast p50 {figures['trigger_to_forecast_ms_p50_buffered']} ms buffered, "
          f"{figures['trigger_to_forecast_ms_p50_cache_only']} ms with the prefix cache only, "
          f"{figures['trigger_to_forecast_ms_p50_unbuffered']} ms unbuffered", flush=True)
    print(orjson.dumps(figures).decode())


if __name__ == "__main__":
    main()
