"""OHLCV bars into tapes: columns, time formats, the four trades per bar, errors, the CLI."""
from __future__ import annotations

from datetime import datetime, timezone

import polars as pl
import pytest
from click.testing import CliRunner

from streams.bars import bar_length_ns, bars_to_tape, import_bars, normalise_bars, read_bars
from agents.cli import cli
from streams.tape import NS_PER_S, Tape, TapeError

DAY_NS = 86_400 * NS_PER_S
CSV = """Date,Symbol,Open,High,Low,Close,Volume
2024-01-02,AAA,10,11,9.5,10.5,1000
2024-01-03,AAA,10.5,10.8,9.9,10.0,1200
2024-01-04,AAA,10.0,10.2,9.0,9.1,800
2024-01-02,BBB,20,20.5,19,19.5,500
2024-01-03,BBB,19.5,21,19.4,20.8,800
"""


def _ns(*args: int) -> int:
    return int(datetime(*args, tzinfo=timezone.utc).timestamp()) * NS_PER_S


def minute_bars(ts: list) -> pl.DataFrame:
    return pl.DataFrame({"timestamp": ts, "ticker": ["X", "X"], "open": [1.0, 1.1], "high": [1.2, 1.2],
                         "low": [0.9, 1.0], "close": [1.1, 1.0], "volume": [10, 20]})


def test_csv_dates_become_four_trades_per_bar_in_order(tmp_path):
    path = tmp_path / "bars.csv"
    path.write_text(CSV)
    tape = bars_to_tape(read_bars(path))
    aaa = tape.ticks.filter(pl.col("symbol") == "AAA")
    assert tape.ticks.height == 20 and tape.news.height == 0 and tape.symbols == ("AAA", "BBB")
    assert set(tape.ticks["kind"].to_list()) == {"trade"}
    first_day = aaa.filter(pl.col("ts_ns") < _ns(2024, 1, 3))
    assert first_day["price"].to_list() == [10.0, 9.5, 11.0, 10.5]        # up bar: low before high
    assert first_day["ts_ns"][0] == _ns(2024, 1, 2) and first_day["ts_ns"][-1] < _ns(2024, 1, 3)
    assert aaa["price"].to_list()[4:8] == [10.5, 10.8, 9.9, 10.0]          # down bar: high before low
    assert aaa["size"].sum() == pytest.approx(3000.0)


def test_replayed_daily_direction_is_close_to_close(tmp_path):
    path = tmp_path / "bars.csv"
    path.write_text(CSV)
    tape = bars_to_tape(read_bars(path))
    close_1 = _ns(2024, 1, 3) - 1_000
    assert tape.realised_direction("AAA", close_1, DAY_NS / NS_PER_S, 5.0) == "down"   # 10.5 -> 10.0
    assert tape.realised_direction("BBB", close_1, DAY_NS / NS_PER_S, 5.0) == "up"     # 19.5 -> 20.8
    assert tape.realised_direction("BBB", close_1, 1.0, 5.0) == "flat"                # next open = close


def test_epoch_milliseconds_and_zoned_datetimes_agree():
    start_ms = 1_704_205_800_000
    from_ms = normalise_bars(minute_bars([start_ms, start_ms + 60_000]))
    zoned = pl.Series([start_ms, start_ms + 60_000]).cast(pl.Datetime("ms")).dt.replace_time_zone("UTC")
    from_dt = normalise_bars(minute_bars(zoned.dt.convert_time_zone("America/New_York").to_list()))
    assert from_ms["ts_ns"].to_list() == from_dt["ts_ns"].to_list() == [start_ms * 1_000_000,
                                                                        (start_ms + 60_000) * 1_000_000]
    assert bar_length_ns(from_ms) == 60 * NS_PER_S


def test_end_stamps_shift_bars_back(tmp_path):
    bars = normalise_bars(minute_bars([1_704_205_860, 1_704_205_920]))  # epoch seconds
    start, end = bars_to_tape(bars), bars_to_tape(bars, stamp="end")
    shift = start.ticks["ts_ns"].to_numpy() - end.ticks["ts_ns"].to_numpy()
    assert set(shift.tolist()) == {60 * NS_PER_S}


def test_parquet_round_trip_through_the_cli(tmp_path):
    bars = minute_bars([1_704_205_800_000, 1_704_205_860_000])
    bars.write_parquet(tmp_path / "bars.parquet")
    result = CliRunner().invoke(cli, ["tape", "import-bars", "--in", str(tmp_path / "bars.parquet"),
                                      "--out", str(tmp_path / "tape")])
    assert result.exit_code == 0, result.output
    tape = Tape.read(tmp_path / "tape")
    assert tape.ticks.height == 8 and tape.symbols == ("X",)
    assert import_bars(tmp_path / "bars.parquet", tmp_path / "tape2").ticks.equals(tape.ticks)


@pytest.mark.parametrize("change, reason", [
    (lambda f: f.drop("volume"), "lack columns"),
    (lambda f: f.rename({"timestamp": "when"}), "one of the columns"),
    (lambda f: f.with_columns(pl.lit(0.5).alias("high")), "inconsistent"),
    (lambda f: f.with_columns(pl.lit(1_704_205_800_000).alias("timestamp")), "repeat"),
    (lambda f: f.with_columns(pl.lit(None, pl.Float64).alias("close")), "empty"),
])
def test_bad_bars_are_refused_with_a_reason(change, reason):
    with pytest.raises(TapeError, match=reason):
        normalise_bars(change(minute_bars([1_704_205_800_000, 1_704_205_860_000])))


def test_cli_reports_a_bad_file_without_a_traceback(tmp_path):
    (tmp_path / "bad.csv").write_text("date,symbol,open\n2024-01-02,A,1\n")
    result = CliRunner().invoke(cli, ["tape", "import-bars", "--in", str(tmp_path / "bad.csv"),
                                      "--out", str(tmp_path / "t")])
    assert result.exit_code != 0 and "lack columns" in result.output
