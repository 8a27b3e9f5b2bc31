"""Forecast latency during a real replay, alone and with an HTTP flood on the same inference worker.

(One inference worker, no deep tier: the base tier's worker then serves HTTP too, with the whole model. With
both tiers, the demo and docker compose serve HTTP from the deep tier's worker instead.)

The whole pipeline of `finllm demo` (embedded Tansu broker and Redis, the agents and inference workers as
processes, the tape replayed at `--speed`) runs the same synthetic tape twice, the inference worker
serving its OpenAI-compatible API (`FINLLM_HTTP_PORT`) both times: once with no HTTP client, once with
`--clients` streaming clients asking it for completions back to back (bench/http_api.py's client) from
the start of the replay until the last forecast is in. Forecasts go first in the engine's scheduler
(forecasts, then HTTP, then warm-ups), so the target is: no forecast expires under the flood that did
not expire alone.

Prints tick-to-forecast p50/p99, expired counts (and which expired only under the flood), the HTTP
requests served; the last line is one JSON object.

    python bench/replay_http_load.py                      # the default model at 1x: about 10 minutes
    python bench/replay_http_load.py --quick              # the tiny test model at 20x: about 90 s
    python bench/replay_http_load.py --speed 5 --clients 16 --max-tokens 64
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse  # noqa: E402
import asyncio  # noqa: E402
import contextlib  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import tempfile  # noqa: E402

import httpx  # noqa: E402
import polars as pl  # noqa: E402

from agents.lab.demo import DemoOptions, run_demo  # noqa: E402
from bench.http_api import http_load, prompts, quantile  # noqa: E402
from inference.checkpoints import DEFAULT_MODEL, resolve_model_dir  # noqa: E402
from inference.engine.cpu import describe_processor  # noqa: E402
from inference.worker import HTTP_PORT_ENV  # noqa: E402
from streams.ports import free_port  # noqa: E402
from streams.synth import write_synth_tape  # noqa: E402

# The real model's speed: on a 2-core AMD EPYC (AVX2, no bf16; shared with other jobs) the replay alone let
# forecasts expire at 2x and faster (bench/RESULTS.md "Forecasts during a replay under an HTTP flood"), so the
# default is 1x and --quick serves the tiny test model at 20x
SPEED_REAL, SPEED_QUICK = 1.0, 20.0


class Flood:
    """`clients` streaming clients on the worker's API, each asking for a completion after the other until
    cancelled; `results` holds every answered request's figures (bench/http_api.py's `one_stream`)."""

    def __init__(self, url: str, clients: int, max_tokens: int) -> None:
        self.url, self.clients, self.max_tokens = url, clients, max_tokens
        self.results: list[dict] = []

    async def __call__(self) -> None:
        async with httpx.AsyncClient(base_url=self.url, timeout=60) as client:
            models = (await client.get("/v1/models")).json()["data"]
        base = next(m["id"] for m in models if not m.get("parent"))
        with contextlib.suppress(asyncio.CancelledError):
            await http_load(self.url, base, itertools.cycle(prompts(64, seed=5)), self.clients, self.max_tokens,
                            self.results)


@contextlib.contextmanager
def environment(**values: str):
    """os.environ with `values` set (the demo hands its environment to the workers), restored after."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key)
            else:
                os.environ[key] = value


def run_once(workdir: Path, tape: Path, args, flood: Flood | None) -> tuple[dict, pl.DataFrame]:
    # one inference worker, answering forecasts and HTTP alike: the case this measures (with a deep tier, the
    # demo serves HTTP from the deep tier's worker, apart from the forecasts' first answers); serving HTTP,
    # it keeps the whole model (inference.adapters.shipped.base_tier_env)
    opts = DemoOptions(workdir, tape, speed=args.speed, partitions=2, engine="paged", model=args.model,
                       timeout_s=args.timeout_s, deep_tier=False)
    report = run_demo(opts, flood)
    return report, pl.read_parquet(workdir / "forecasts.parquet").select("id", "status", "total_ms")


def compare(alone: tuple[dict, pl.DataFrame], loaded: tuple[dict, pl.DataFrame], flood: Flood) -> dict:
    """The figures of both runs, and the forecasts that expired under the flood but not alone."""
    (report_a, frame_a), (report_l, frame_l) = alone, loaded
    expired = {name: set(f.filter(pl.col("status") == "expired")["id"]) for name, f in (("a", frame_a), ("l", frame_l))}
    served = flood.results
    return {
        "forecast_p50_ms_alone": report_a["latency_ms"]["p50"], "forecast_p99_ms_alone": report_a["latency_ms"]["p99"],
        "forecast_p50_ms_http_load": report_l["latency_ms"]["p50"],
        "forecast_p99_ms_http_load": report_l["latency_ms"]["p99"],
        "forecasts_alone": report_a["forecasts"], "forecasts_http_load": report_l["forecasts"],
        "triggers": report_a["triggers"], "missing": report_a["missing"] + report_l["missing"],
        "expired_alone": len(expired["a"]), "expired_http_load": len(expired["l"]),
        "expired_only_under_http_load": len(expired["l"] - expired["a"]),
        "http_requests_served": len(served), "http_tokens": sum(r["tokens"] for r in served),
        "http_ttft_p50_ms": round(quantile([r["ttft_s"] for r in served], 0.5) * 1e3, 1),
        "model": report_a["model"], "processor": describe_processor(), "model_threads": report_a["model_threads"],
    }


def run(args) -> dict:
    resolve_model_dir(args.model)    # converted before the runs, so that no run's start-up includes it
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.out or Path(tmp)
        write_synth_tape(workdir / "tape", args.symbols, args.minutes, seed=4)
        port = free_port()
        flood = Flood(f"http://127.0.0.1:{port}", args.clients, args.max_tokens)
        with environment(**{HTTP_PORT_ENV: str(port)}):
            alone = run_once(workdir / "alone", workdir / "tape", args, None)
            loaded = run_once(workdir / "http_load", workdir / "tape", args, flood)
    return compare(alone, loaded, flood) | {"speed": args.speed, "clients": args.clients,
                                            "max_tokens": args.max_tokens, "symbols": args.symbols,
                                            "minutes": args.minutes}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"the tiny model at {SPEED_QUICK:g}x on a 3-symbol, 8-minute tape (about 90 s)")
    parser.add_argument("--model", help=f"a registered name or a folder (default: {DEFAULT_MODEL}; tiny with --quick)")
    parser.add_argument("--speed", type=float, help=f"replay at this multiple of real time (default: {SPEED_REAL:g}; "
                                                    f"{SPEED_QUICK:g} with --quick)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent HTTP clients")
    parser.add_argument("--max-tokens", type=int, default=32, help="tokens each HTTP request asks for")
    parser.add_argument("--symbols", type=int)
    parser.add_argument("--minutes", type=float)
    parser.add_argument("--out", type=Path, help="keep each run's report, forecasts and worker logs here")
    parser.add_argument("--timeout-s", type=float, default=600.0, help="for all forecasts after the replay")
    args = parser.parse_args(argv)
    args.model = args.model or ("tiny" if args.quick else DEFAULT_MODEL)
    args.speed = args.speed or (SPEED_QUICK if args.quick else SPEED_REAL)
    args.symbols = args.symbols or 3
    args.minutes = args.minutes or (8 if args.quick else 4)
    result = run(args)
    for key, value in result.items():
        print(f"{key:<30} {value}")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
