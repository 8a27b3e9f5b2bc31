"""`finllm`: the command line. Commands of the layers above streams (the demo, adapters, evaluation)
are named here by module path and imported only when run, so this module depends on nothing above it."""
from __future__ import annotations

import asyncio
import importlib
import sys
import time
from pathlib import Path

import click
import orjson

from streams.settings import KafkaSettings, redis_url_from_env
from streams.topics import DEFAULT_PARTITIONS, Topics

LAZY_COMMANDS = {"demo": "agents.cli:demo", "status": "streams.status:status", "audit": "agents.audit_cli:audit",
                 "adapters": "agents.adapters_cli:adapters", "eval": "agents.eval_cli:eval_cmd"}


class LazyGroup(click.Group):
    """A click group whose listed commands are imported from their modules on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | LAZY_COMMANDS.keys())

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in LAZY_COMMANDS:
            module, attr = LAZY_COMMANDS[name].split(":")
            return getattr(importlib.import_module(module), attr)
        return super().get_command(ctx, name)


bootstrap_option = click.option("--bootstrap", envvar="FINLLM_KAFKA_BOOTSTRAP", help="Kafka bootstrap HOST:PORT.")
redis_option = click.option("--redis", "redis_url", envvar="FINLLM_REDIS_URL", help="Redis URL.")


@click.group(cls=LazyGroup)
def cli() -> None:
    """Fin-LLM-Inference: ticks and news in, fused LLM forecasts out."""


@cli.command()
@click.option("--workdir", type=click.Path(path_type=Path), default=Path(".finllm"), show_default=True)
@click.option("--partitions", default=DEFAULT_PARTITIONS, show_default=True)
def up(workdir: Path, partitions: int) -> None:
    """Start the embedded broker and Redis, create the topics, and keep them running until Ctrl-C."""
    from streams.admin import ensure_topics
    from streams.embedded import EmbeddedStack

    workdir.mkdir(parents=True, exist_ok=True)
    with EmbeddedStack.start(workdir) as stack:
        asyncio.run(ensure_topics(stack.bootstrap, Topics(partitions=partitions).all()))
        click.echo(f"FINLLM_KAFKA_BOOTSTRAP={stack.bootstrap}")
        click.echo(f"FINLLM_REDIS_URL={stack.redis_url}")
        click.echo("Running; Ctrl-C stops both.", err=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            click.echo("stopping", err=True)


@cli.command(name="replay")
@click.argument("tape", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--speed", type=float, help="Multiple of real time (1 = as recorded).")
@click.option("--max", "as_fast", is_flag=True, help="As fast as possible (the default without --speed).")
@click.option("--bundle-ms", default=0, show_default=True, help="Send each symbol's ticks in bundles of this span.")
@bootstrap_option
def replay_cmd(tape: Path, speed: float | None, as_fast: bool, bundle_ms: int, bootstrap: str | None) -> None:
    """Publish a tape to `ticks` and `news` in event-time order."""
    from streams.replay import replay
    from streams.tape import Tape

    if speed is not None and as_fast:
        raise click.UsageError("--speed and --max exclude each other")
    stats = asyncio.run(replay(Tape.read(tape), _kafka(bootstrap), speed=speed, bundle_ms=bundle_ms))
    click.echo(orjson.dumps({"ticks": stats.ticks, "news": stats.news, "duration_s": round(stats.duration_s, 3),
                             "max_lag_s": round(stats.max_lag_s, 3)}).decode())


@cli.command()
@click.argument("what", type=click.Choice(["forecasts"]))
@click.option("--symbol", help="Only this symbol.")
@click.option("--from-beginning", is_flag=True, help="Start at the oldest forecast kept by the broker.")
@bootstrap_option
def tail(what: str, symbol: str | None, from_beginning: bool, bootstrap: str | None) -> None:
    """Print forecasts as they arrive, one JSON line each (Ctrl-C stops)."""
    from schemas import encode
    from streams.consumer import iter_forecasts

    async def run() -> None:
        async for forecast in iter_forecasts(_kafka(bootstrap), symbol=symbol, from_beginning=from_beginning):
            sys.stdout.write(encode(forecast).decode() + "\n")
            sys.stdout.flush()

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass


@cli.command()
@click.argument("symbol")
@redis_option
@click.option("--prefix", envvar="FINLLM_TOPIC_PREFIX", default="", help="Key prefix (the topic prefix).")
def latest(symbol: str, redis_url: str | None, prefix: str) -> None:
    """The latest forecast of SYMBOL, as kept in Redis by the inference worker."""
    from streams.latest import LatestStore

    async def run() -> dict | None:
        store = LatestStore.from_url(redis_url_from_env(redis_url), prefix)
        try:
            return await store.read(symbol)
        finally:
            await store.close()

    record = asyncio.run(run())
    if record is None:
        raise click.ClickException(f"no forecast for {symbol} yet")
    click.echo(orjson.dumps(record).decode())


@cli.group()
def tape() -> None:
    """Make and inspect tapes."""


@tape.command()
@click.option("--out", type=click.Path(path_type=Path), required=True)
@click.option("--symbols", default=4, show_default=True)
@click.option("--minutes", default=30.0, show_default=True)
@click.option("--seed", default=0, show_default=True)
def synth(out: Path, symbols: int, minutes: float, seed: int) -> None:
    """Generate a synthetic tape (same seed, same bytes)."""
    from streams.synth import write_synth_tape

    made = write_synth_tape(out, symbols, minutes, seed)
    click.echo(f"{out}: {made.ticks.height} ticks, {made.news.height} news, {len(made.symbols)} symbols")


@tape.command(name="import-bars")
@click.option("--in", "in_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
              help="OHLCV bars: CSV or Parquet with date/timestamp, symbol, open, high, low, close, volume.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Tape folder to write.")
@click.option("--bar-seconds", type=int, help="Bar length (default: the median spacing of the bars).")
@click.option("--stamp", type=click.Choice(["start", "end"]), default="start", show_default=True,
              help="Whether a bar's time is its start or its end.")
def import_bars(in_file: Path, out: Path, bar_seconds: int | None, stamp: str) -> None:
    """Turn OHLCV bars from any vendor into a tape (four trades per bar, no news)."""
    from streams.bars import import_bars as run_import
    from streams.tape import TapeError

    try:
        made = run_import(in_file, out, bar_seconds * 1_000_000_000 if bar_seconds else None, stamp)
    except TapeError as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"{out}: {made.ticks.height} trades from {made.ticks.height // 4} bars, {len(made.symbols)} symbols")


def _kafka(bootstrap: str | None) -> KafkaSettings:
    try:
        return KafkaSettings.from_env(bootstrap)
    except ValueError as error:
        raise click.UsageError(str(error)) from None


def main() -> None:
    cli(prog_name="finllm")
