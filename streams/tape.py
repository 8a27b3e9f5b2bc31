"""A tape: recorded (or synthetic) market ticks and news, read from and written to a folder.

A tape folder holds `ticks.parquet` and `news.parquet` (or `ticks.csv` / `news.csv`), and
optionally `truth.parquet` (the generator's ground truth, read only when asked for).

Ticks are sorted by (ts_ns, symbol), ties kept in file order; news is sorted by ts_ns, ties
kept in file order. In CSV, nulls are empty fields and `symbols` is ";"-separated ("ACME;BOLT").
"""
from __future__ import annotations

import heapq
import math
import pathlib
from dataclasses import dataclass
from typing import Iterator, Literal

import numpy as np
import polars as pl

from schemas.units import NS_PER_S

TICK_SCHEMA: dict[str, pl.DataType] = {
    "symbol": pl.String(), "ts_ns": pl.Int64(), "kind": pl.String(),
    "price": pl.Float64(), "size": pl.Float64(),
    "bid_px": pl.Float64(), "bid_sz": pl.Float64(),
    "ask_px": pl.Float64(), "ask_sz": pl.Float64(),
}
NEWS_SCHEMA: dict[str, pl.DataType] = {
    "id": pl.String(), "ts_ns": pl.Int64(), "source": pl.String(),
    "headline": pl.String(), "body": pl.String(), "symbols": pl.List(pl.String()),
}
TRUTH_SCHEMA: dict[str, pl.DataType] = {
    "news_id": pl.String(), "sentiment": pl.Int8(), "jump_symbol": pl.String(),
    "jump_ts_ns": pl.Int64(), "jump_return": pl.Float64(),
}
TICK_KINDS = ("trade", "quote")
NON_NULL = {"ticks": ("symbol", "ts_ns", "kind"),
            "news": ("id", "ts_ns", "source", "headline", "symbols")}
CSV_LIST_SEPARATOR = ";"

Event = tuple[Literal["tick", "news"], dict]


class TapeError(ValueError):
    """A tape folder or file is missing, malformed, or has the wrong columns."""

    def __init__(self, path: pathlib.Path | str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = pathlib.Path(path)
        self.reason = reason


@dataclass(frozen=True, slots=True, eq=False)
class Tape:
    """Ticks and news frames, each already cast and sorted (see the module docstring).

    `truth` is the generator's ground truth (TRUTH_SCHEMA) or None for recorded tapes.
    """

    ticks: pl.DataFrame
    news: pl.DataFrame
    truth: pl.DataFrame | None = None

    @classmethod
    def from_frames(cls, ticks: pl.DataFrame, news: pl.DataFrame,
                    truth: pl.DataFrame | None = None, origin: str = "<frames>") -> Tape:
        """Checks columns, casts dtypes, checks values and sorts; raises TapeError naming `origin`."""
        ticks = _conform(ticks, TICK_SCHEMA, "ticks", origin)
        news = _conform(news, NEWS_SCHEMA, "news", origin)
        _check_values(ticks, news, origin)
        if truth is not None:
            truth = _conform(truth, TRUTH_SCHEMA, "truth", origin)
        ticks = ticks.sort(["ts_ns", "symbol"], maintain_order=True)
        return cls(ticks, news.sort("ts_ns", maintain_order=True), truth)

    @classmethod
    def read(cls, path: pathlib.Path | str, with_truth: bool = False) -> Tape:
        """Reads a tape folder (parquet preferred over csv); `with_truth` also loads truth.parquet."""
        folder = pathlib.Path(path)
        if not folder.is_dir():
            raise TapeError(folder, "not a tape folder")
        ticks = _read_table(folder, "ticks", TICK_SCHEMA)
        news = _read_table(folder, "news", NEWS_SCHEMA)
        truth = _read_truth(folder) if with_truth else None
        return cls.from_frames(ticks, news, truth, origin=str(folder))

    def write(self, path: pathlib.Path | str) -> None:
        """Writes ticks/news (and truth if present) as parquet; same frames give the same bytes."""
        folder = pathlib.Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        tables = {"ticks": self.ticks, "news": self.news, "truth": self.truth}
        for name, frame in tables.items():
            if frame is not None:
                frame.write_parquet(folder / f"{name}.parquet", compression="zstd", statistics=False)

    @property
    def symbols(self) -> tuple[str, ...]:
        """Sorted distinct symbols that have ticks."""
        return tuple(self.ticks.get_column("symbol").unique().sort().to_list())

    @property
    def end_ns(self) -> int | None:
        """Event time of the last tick, or None for a tape without ticks."""
        return self.ticks.get_column("ts_ns").max()

    def events(self) -> Iterator[Event]:
        """All ticks and news in event-time order; at equal ts_ns ticks come before news.

        Ticks first: a news item stamped at t is seen against the market as of t.
        """
        ticks = (("tick", row) for row in self.ticks.iter_rows(named=True))
        news = (("news", row) for row in self.news.iter_rows(named=True))
        return heapq.merge(ticks, news, key=_event_ts_ns)

    def realised_direction(self, symbol: str, ts_ns: int, horizon_s: float,
                           flat_bps: float) -> str | None:
        """"up"/"down"/"flat" from the last trade at/before ts_ns to the last at/before ts_ns+horizon.

        None if `symbol` has no trade at/before ts_ns or the tape ends before ts_ns + horizon.
        """
        end_ns = ts_ns + _horizon_ns(horizon_s)
        if self.end_ns is None or end_ns > self.end_ns:
            return None
        trades = self.ticks.filter((pl.col("kind") == "trade") & (pl.col("symbol") == symbol))
        trade_ts_ns = trades.get_column("ts_ns").to_numpy()
        prices = trades.get_column("price").to_numpy()
        start_at = int(np.searchsorted(trade_ts_ns, ts_ns, side="right")) - 1
        if start_at < 0:
            return None
        end_at = int(np.searchsorted(trade_ts_ns, end_ns, side="right")) - 1
        return _direction(math.log(prices[end_at] / prices[start_at]), flat_bps)

    def realised_directions(self, forecasts: pl.DataFrame, horizon_s: float | None = None,
                            flat_bps: float | None = None) -> pl.Series:
        """Vectorised realised_direction for every row of `forecasts` (columns symbol, ts_ns).

        `horizon_s` / `flat_bps` apply to all rows when given, otherwise they are read per row
        from the columns of the same name. Returns a String series "realised", in input order.
        """
        rows = _forecast_rows(forecasts, horizon_s, flat_bps)
        if self.end_ns is None:
            return pl.Series("realised", [None] * rows.height, pl.String)
        trades = self._trade_prices()
        start = _asof_price(rows, trades, "ts_ns", "start_px")
        both = _asof_price(start, trades, "end_ns", "end_px").sort("row")
        return both.select(_direction_expr(self.end_ns).alias("realised")).to_series()

    def _trade_prices(self) -> pl.DataFrame:
        trades = self.ticks.filter(pl.col("kind") == "trade")
        return trades.select("symbol", pl.col("ts_ns").alias("trade_ts_ns"), "price")


def _event_ts_ns(event: Event) -> int:
    return event[1]["ts_ns"]


def _horizon_ns(horizon_s: float) -> int:
    return round(horizon_s * NS_PER_S)


def _direction(log_return: float, flat_bps: float) -> str:
    if log_return > flat_bps / 1e4:
        return "up"
    if log_return < -flat_bps / 1e4:
        return "down"
    return "flat"


def _direction_expr(tape_end_ns: int) -> pl.Expr:
    """The realised direction of a row with start_px, end_px, end_ns and flat_bps; null if unknown."""
    log_return = (pl.col("end_px") / pl.col("start_px")).log()
    flat = pl.col("flat_bps") / 1e4
    known = (pl.col("end_ns") <= tape_end_ns) & pl.col("start_px").is_not_null()
    return (pl.when(~known).then(None)
            .when(log_return > flat).then(pl.lit("up"))
            .when(log_return < -flat).then(pl.lit("down"))
            .otherwise(pl.lit("flat")))


def _forecast_rows(forecasts: pl.DataFrame, horizon_s: float | None,
                   flat_bps: float | None) -> pl.DataFrame:
    """symbol, ts_ns, end_ns, flat_bps and the input row number, one row per forecast."""
    horizon = pl.lit(horizon_s) if horizon_s is not None else pl.col("horizon_s")
    flat = pl.lit(flat_bps) if flat_bps is not None else pl.col("flat_bps")
    return forecasts.with_row_index("row").select(
        "row", pl.col("symbol").cast(pl.String), pl.col("ts_ns").cast(pl.Int64),
        (pl.col("ts_ns") + (horizon.cast(pl.Float64) * NS_PER_S).round().cast(pl.Int64)).alias("end_ns"),
        flat.cast(pl.Float64).alias("flat_bps"),
    )


def _asof_price(rows: pl.DataFrame, trades: pl.DataFrame, at: str, name: str) -> pl.DataFrame:
    """Adds `name`: the price of the last trade of the row's symbol at or before column `at`."""
    joined = rows.sort(at).join_asof(trades, left_on=at, right_on="trade_ts_ns", by="symbol",
                                     strategy="backward", check_sortedness=False)
    return joined.drop("trade_ts_ns").rename({"price": name})


def _read_table(folder: pathlib.Path, name: str, schema: dict[str, pl.DataType]) -> pl.DataFrame:
    parquet, csv = folder / f"{name}.parquet", folder / f"{name}.csv"
    try:
        if parquet.exists():
            return pl.read_parquet(parquet)
        if csv.exists():
            return _read_csv(csv, schema)
    except (pl.exceptions.PolarsError, OSError) as error:
        bad_file = parquet if parquet.exists() else csv
        raise TapeError(bad_file, f"unreadable: {_first_line(error)}") from error
    raise TapeError(folder, f"missing {name}.parquet or {name}.csv")


def _read_csv(path: pathlib.Path, schema: dict[str, pl.DataType]) -> pl.DataFrame:
    """Reads every column as text (lists as ";"-joined text); _conform casts them afterwards."""
    frame = pl.read_csv(path, infer_schema=False)
    lists = [col for col, dtype in schema.items() if isinstance(dtype, pl.List) and col in frame.columns]
    return frame.with_columns(pl.col(col).str.split(CSV_LIST_SEPARATOR) for col in lists)


def _read_truth(folder: pathlib.Path) -> pl.DataFrame:
    path = folder / "truth.parquet"
    if not path.exists():
        raise TapeError(folder, "missing truth.parquet")
    try:
        return pl.read_parquet(path)
    except (pl.exceptions.PolarsError, OSError) as error:
        raise TapeError(path, f"unreadable: {_first_line(error)}") from error


def _conform(frame: pl.DataFrame, schema: dict[str, pl.DataType], table: str,
             origin: str) -> pl.DataFrame:
    """Selects the schema's columns in order, cast strictly; raises TapeError on missing/bad ones."""
    missing = [col for col in schema if col not in frame.columns]
    if missing:
        raise TapeError(origin, f"{table} lacks columns {missing}")
    frame = frame.select(list(schema))
    try:
        return frame.cast(schema, strict=True)  # type: ignore[arg-type]
    except pl.exceptions.PolarsError as error:
        raise TapeError(origin, f"{table} has values of the wrong type: {_first_line(error)}") from error


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def _check_values(ticks: pl.DataFrame, news: pl.DataFrame, origin: str) -> None:
    for table, frame in (("ticks", ticks), ("news", news)):
        nulls = [col for col in NON_NULL[table] if frame.get_column(col).null_count()]
        if nulls:
            raise TapeError(origin, f"{table} has nulls in {nulls}")
    kinds = set(ticks.get_column("kind").unique().to_list())
    if not kinds <= set(TICK_KINDS):
        raise TapeError(origin, f"ticks have unknown kinds {sorted(kinds - set(TICK_KINDS))}")
    if ticks.filter((pl.col("kind") == "trade") & pl.col("price").is_null()).height:
        raise TapeError(origin, "ticks have trades without a price")
    if news.get_column("id").n_unique() != news.height:
        raise TapeError(origin, "news ids are not unique")
