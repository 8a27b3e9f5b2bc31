"""`finllm up|replay|tail|latest|status`: run the stack, feed it a tape, and watch what comes out."""
from __future__ import annotations

import asyncio
import shlex
import sys
import time
from pathlib import Path

import click
import orjson

from agents.cli.options import (bootstrap_option, kafka_settings, model_option, prefix_option, redis_option,
                                resolve_redis)
from streams.topics import DEFAULT_PARTITIONS, Topics


@click.command()
@click.option("--workdir", type=click.Path(path_type=Path),
              help="Where the broker and Redis keep their logs (default: <cache>/work/stack).")
@click.option("--partitions", default=DEFAULT_PARTITIONS, show_default=True)
@model_option()
@click.option("--adapters/--no-adapters", default=True, show_default=True,
              help="Also print the settings of the adapters shipped for the model, so hand-started workers serve "
                   "them as the demo does.")
def up(workdir: Path | None, partitions: int, model: str | None, adapters: bool) -> None:
    """Start the embedded broker and Redis, create the topics, print the settings to export (one KEY=VALUE a
    line), and keep them running until Ctrl-C."""
    from inference.checkpoints import DEFAULT_MODEL
    from streams.admin import ensure_topics
    from streams.embedded import EmbeddedStack
    from streams.settings import work_dir

    workdir = workdir or work_dir("stack")
    workdir.mkdir(parents=True, exist_ok=True)
    with EmbeddedStack.start(workdir) as stack:
        asyncio.run(ensure_topics(stack.bootstrap, Topics(partitions=partitions).all()))
        settings = {"FINLLM_KAFKA_BOOTSTRAP": stack.bootstrap, "FINLLM_REDIS_URL": stack.redis_url,
                    "FINLLM_MODEL": model or DEFAULT_MODEL}
        for key, value in (settings | (_shipped_adapters_env(model) if adapters else {})).items():
            click.echo(f"{key}={shlex.quote(value)}")
        click.echo("Running; Ctrl-C stops both.", err=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            click.echo("stopping", err=True)


def _shipped_adapters_env(model: str | None) -> dict[str, str]:
    """What the demo gives its workers: the adapters shipped for `model` and each symbol's route (none for
    a model without shipped adapters)."""
    from inference.adapters.shipped import shipped_routing

    routing = shipped_routing(model)
    return routing.env() if routing else {}


@click.command(name="replay")
@click.argument("tape", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--speed", type=float, help="Multiple of real time (1 = as recorded).")
@click.option("--max", "as_fast", is_flag=True, help="As fast as possible (the default without --speed).")
@click.option("--bundle-ms", default=0, show_default=True, help="Send each symbol's ticks in bundles of this span.")
@bootstrap_option()
def replay_cmd(tape: Path, speed: float | None, as_fast: bool, bundle_ms: int, bootstrap: str | None) -> None:
    """Publish a tape to `ticks` and `news` in event-time order."""
    from streams.replay import replay
    from streams.tape import Tape

    if speed is not None and as_fast:
        raise click.UsageError("--speed and --max exclude each other")
    stats = asyncio.run(replay(Tape.read(tape), kafka_settings(bootstrap), speed=speed, bundle_ms=bundle_ms))
    click.echo(orjson.dumps({"ticks": stats.ticks, "news": stats.news, "duration_s": round(stats.duration_s, 3),
                             "max_lag_s": round(stats.max_lag_s, 3)}).decode())


@click.command()
@click.argument("what", type=click.Choice(["forecasts"]))
@click.option("--symbol", help="Only this symbol.")
@click.option("--from-beginning", is_flag=True, help="Start at the oldest forecast kept by the broker.")
@bootstrap_option()
def tail(what: str, symbol: str | None, from_beginning: bool, bootstrap: str | None) -> None:
    """Print forecasts as they arrive, one JSON line each (Ctrl-C stops)."""
    from schemas import encode
    from streams.consumer import iter_forecasts

    async def run() -> None:
        async for forecast in iter_forecasts(kafka_settings(bootstrap), symbol=symbol, from_beginning=from_beginning):
            sys.stdout.write(encode(forecast).decode() + "\n")
            sys.stdout.flush()

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass


@click.command()
@click.argument("symbol")
@redis_option()
@prefix_option()
def latest(symbol: str, redis_url: str | None, prefix: str) -> None:
    """The latest forecast of SYMBOL, as kept in Redis by the inference worker."""
    from streams.latest import LatestStore

    url = resolve_redis(redis_url)

    async def run() -> dict | None:
        store = LatestStore.from_url(url, prefix)
        try:
            return await store.read(symbol)
        finally:
            await store.close()

    record = asyncio.run(run())
    if record is None:
        raise click.ClickException(f"no forecast for {symbol} yet")
    click.echo(orjson.dumps(record).decode())


@click.command()
@bootstrap_option()
@redis_option()
def status(bootstrap: str | None, redis_url: str | None) -> None:
    """One screen on a running stack: services, topics and lag, throughput, latency, adapters.

    The topic prefix comes from FINLLM_TOPIC_PREFIX."""
    from streams.status import gather_status, render

    kafka, url = kafka_settings(bootstrap), resolve_redis(redis_url)
    view = asyncio.run(gather_status(kafka, url))
    click.echo(render(view))
    if not view.ok:
        raise SystemExit(1)

