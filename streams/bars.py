"""OHLCV bars (CSV or Parquet, any vendor) into a tape, so real daily or minute bars can be replayed.

Columns, matched case-insensitively: a time (`timestamp`, `datetime`, `time` or `date`), `symbol`
(or `ticker`), `open`, `high`, `low`, `close`, `volume`. Times are ISO dates or datetimes (UTC
unless they carry a zone) or integer epochs (s, ms, us or ns, told apart by magnitude). A bar
stamped t covers [t, t + bar) with `stamp="start"` (the usual convention) or [t - bar, t) with
`stamp="end"`; the bar length is the median spacing of each symbol's bars unless given.

Each bar becomes four trades inside its interval: the open at its start, the close just before
its end, and the high and low between them (low first on an up bar, high first on a down bar,
the path that needs the least travel), each with a quarter of the volume. The tape has no news.
"""
from __future__ import annotations

import pathlib

import polars as pl

from streams.tape import NEWS_SCHEMA, NS_PER_S, TICK_SCHEMA, Tape, TapeError

TIME_COLUMNS = ("timestamp", "datetime", "time", "date")
SYMBOL_COLUMNS = ("symbol", "ticker")
PRICE_COLUMNS = ("open", "high", "low", "close", "volume")
STAMPS = ("start", "end")
# Where, as a share of the bar, each of its four trades falls: open, first extreme, second extreme, close.
TRADE_AT = (0.0, 0.25, 0.5, 1.0)
CLOSE_BEFORE_END_NS = 1_000   # the close trades just inside the bar, before the next bar's open


def read_bars(path: pathlib.Path | str) -> pl.DataFrame:
    """The bar file as a frame with columns ts_ns (bar stamp), symbol, open, high, low, close, volume."""
    path = pathlib.Path(path)
    try:
        raw = pl.read_parquet(path) if path.suffix.lower() in (".parquet", ".pq") else pl.read_csv(
            path, infer_schema_length=10_000, try_parse_dates=False)
    except (pl.exceptions.PolarsError, OSError) as error:
        raise TapeError(path, f"unreadable bar file: {str(error).splitlines()[0]}") from error
    return normalise_bars(raw, str(path))


def normalise_bars(raw: pl.DataFrame, origin: str = "<bars>") -> pl.DataFrame:
    by_lower = {name.lower().strip(): name for name in raw.columns}
    time_col = _pick(by_lower, TIME_COLUMNS, origin)
    symbol_col = _pick(by_lower, SYMBOL_COLUMNS, origin)
    missing = [c for c in PRICE_COLUMNS if c not in by_lower]
    if missing:
        raise TapeError(origin, f"bars lack columns {missing}")
    try:
        frame = raw.select(_timestamp_ns(raw.get_column(time_col)).alias("ts_ns"),
                           pl.col(symbol_col).cast(pl.String).alias("symbol"),
                           *(pl.col(by_lower[c]).cast(pl.Float64).alias(c) for c in PRICE_COLUMNS))
    except pl.exceptions.PolarsError as error:
        raise TapeError(origin, f"bars have values of the wrong type: {str(error).splitlines()[0]}") from error
    _check_bars(frame, origin)
    return frame.sort("symbol", "ts_ns")


def _pick(by_lower: dict[str, str], names: tuple[str, ...], origin: str) -> str:
    for name in names:
        if name in by_lower:
            return by_lower[name]
    raise TapeError(origin, f"bars need one of the columns {list(names)}")


def _timestamp_ns(column: pl.Series) -> pl.Expr:
    """Epoch nanoseconds from a date, datetime, ISO string or integer epoch column."""
    if column.dtype == pl.Date:
        return pl.lit(column).cast(pl.Datetime("ns")).cast(pl.Int64)
    if isinstance(column.dtype, pl.Datetime):
        zoned = column.dt.convert_time_zone("UTC") if column.dtype.time_zone else column
        return pl.lit(zoned.dt.cast_time_unit("ns")).cast(pl.Int64)
    if column.dtype.is_integer():
        return pl.lit(_epoch_ns(column))
    parsed = column.cast(pl.String).str.to_datetime(time_unit="ns", time_zone="UTC", strict=True)
    return pl.lit(parsed).cast(pl.Int64)


def _epoch_ns(column: pl.Series) -> pl.Series:
    """Integer epochs to ns: below 1e11 seconds, 1e14 ms, 1e17 us, otherwise ns."""
    largest = column.abs().max() or 0
    scale = next(s for limit, s in ((1e11, NS_PER_S), (1e14, 1_000_000), (1e17, 1_000), (float("inf"), 1))
                 if largest < limit)
    return column.cast(pl.Int64) * scale


def _check_bars(frame: pl.DataFrame, origin: str) -> None:
    if frame.is_empty():
        raise TapeError(origin, "no bars")
    if frame.null_count().sum_horizontal().item():
        raise TapeError(origin, "bars have empty fields")
    bad = frame.filter((pl.col("high") < pl.max_horizontal("open", "close", "low"))
                       | (pl.col("low") > pl.min_horizontal("open", "close")) | (pl.col("low") <= 0)
                       | (pl.col("volume") < 0))
    if bad.height:
        row = bad.row(0, named=True)
        raise TapeError(origin, f"{bad.height} bars are inconsistent (high < max or low > min or "
                                f"non-positive price), e.g. {row['symbol']} at {row['ts_ns']}")
    if frame.select(pl.struct("symbol", "ts_ns").is_duplicated().any()).item():
        raise TapeError(origin, "bars repeat a (symbol, time)")


def bar_length_ns(bars: pl.DataFrame) -> int:
    """Median spacing of consecutive bars of a symbol (one bar per symbol: one day)."""
    gaps = bars.select(pl.col("ts_ns").diff().over("symbol").alias("gap")).drop_nulls()
    gaps = gaps.filter(pl.col("gap") > 0)
    return int(gaps.get_column("gap").median()) if gaps.height else 86_400 * NS_PER_S


def bars_to_tape(bars: pl.DataFrame, bar_ns: int | None = None, stamp: str = "start") -> Tape:
    """Four trades per bar (see the module docstring); `bars` as `read_bars` returns them."""
    if stamp not in STAMPS:
        raise ValueError(f"stamp must be one of {STAMPS}, got {stamp!r}")
    bar_ns = bar_ns or bar_length_ns(bars)
    start = pl.col("ts_ns") - (bar_ns if stamp == "end" else 0)
    up_bar = pl.col("close") >= pl.col("open")
    prices = (pl.col("open"), pl.when(up_bar).then(pl.col("low")).otherwise(pl.col("high")),
              pl.when(up_bar).then(pl.col("high")).otherwise(pl.col("low")), pl.col("close"))
    trades = pl.concat([bars.select(pl.col("symbol"), _trade_ts(start, share, bar_ns).alias("ts_ns"),
                                    price.alias("price"), (pl.col("volume") / 4).alias("size"))
                        for share, price in zip(TRADE_AT, prices)])
    ticks = trades.with_columns(pl.lit("trade").alias("kind"),
                                *(pl.lit(None, pl.Float64).alias(c) for c in ("bid_px", "bid_sz", "ask_px", "ask_sz")))
    news = pl.DataFrame(schema=NEWS_SCHEMA)
    return Tape.from_frames(ticks.select(list(TICK_SCHEMA)), news, origin="bars")


def _trade_ts(start: pl.Expr, share: float, bar_ns: int) -> pl.Expr:
    offset_ns = bar_ns - CLOSE_BEFORE_END_NS if share == 1.0 else int(bar_ns * share)
    return (start + offset_ns).cast(pl.Int64)


def import_bars(path: pathlib.Path | str, out: pathlib.Path | str, bar_ns: int | None = None,
                stamp: str = "start") -> Tape:
    tape = bars_to_tape(read_bars(path), bar_ns, stamp)
    tape.write(out)
    return tape
