"""`finllm tape synth|import-bars`: make tapes."""
from __future__ import annotations

from pathlib import Path

import click


@click.group()
def tape() -> None:
    """Make and inspect tapes."""


@tape.command()
@click.option("--out", type=click.Path(path_type=Path), required=True)
@click.option("--symbols", default=4, show_default=True)
@click.option("--minutes", default=30.0, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--no-news", is_flag=True, help="The same market without its news (no headline explains a jump).")
def synth(out: Path, symbols: int, minutes: float, seed: int, no_news: bool) -> None:
    """Generate a synthetic tape (same seed, same bytes)."""
    from streams.synth import write_synth_tape

    made = write_synth_tape(out, symbols, minutes, seed, news=not no_news)
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
