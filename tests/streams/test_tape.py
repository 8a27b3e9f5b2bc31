"""Tape reading, writing, merged event order and realised directions on hand-made tapes."""
from __future__ import annotations

import pathlib

import numpy as np
import polars as pl
import pytest

from streams.synth import synth_tape
from streams.tape import TICK_SCHEMA, Tape, TapeError

S = 1_000_000_000
TICKS_HEADER = "symbol,ts_ns,kind,price,size,bid_px,bid_sz,ask_px,ask_sz"
NEWS_HEADER = "id,ts_ns,source,headline,body,symbols"
# Trades of A: 100.0 at 0 s, 101.0 at 10 s, 100.9 at 20 s; two B trades tied at 10 s; the tape ends
# with a quote at 30 s whose mid (200) must never count as a trade price.
TINY_TICKS = [
    f"A,{10 * S},trade,101.0,5,,,,",
    "A,0,trade,100.0,10,,,,",
    f"B,{10 * S},trade,50.0,1,,,,",
    f"B,{10 * S},trade,51.0,1,,,,",
    f"A,{20 * S},trade,100.9,7,,,,",
    f"A,{30 * S},quote,,,199.9,100,200.1,300",
]
TINY_NEWS = [f"n2,{10 * S},blog,B rallies,,B", f"n1,{10 * S},wire,A and B,text,A;B", "n0,5,wire,A,,A"]


def write_csv_tape(folder: pathlib.Path, ticks: list[str], news: list[str],
                   ticks_header: str = TICKS_HEADER, news_header: str = NEWS_HEADER) -> pathlib.Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ticks.csv").write_text("\n".join([ticks_header, *ticks]) + "\n")
    (folder / "news.csv").write_text("\n".join([news_header, *news]) + "\n")
    return folder


@pytest.fixture
def tiny(tmp_path: pathlib.Path) -> Tape:
    return Tape.read(write_csv_tape(tmp_path / "tiny", TINY_TICKS, TINY_NEWS))


def test_csv_is_cast_and_sorted(tiny: Tape) -> None:
    assert dict(tiny.ticks.schema) == TICK_SCHEMA
    assert tiny.ticks.get_column("ts_ns").to_list() == [0, 10 * S, 10 * S, 10 * S, 20 * S, 30 * S]
    assert tiny.ticks.get_column("price").to_list()[1:4] == [101.0, 50.0, 51.0]  # ties keep file order
    assert tiny.news.get_column("id").to_list() == ["n0", "n2", "n1"]
    assert tiny.news.row(2, named=True) == {"id": "n1", "ts_ns": 10 * S, "source": "wire",
                                            "headline": "A and B", "body": "text", "symbols": ["A", "B"]}
    assert tiny.news.get_column("body").to_list()[0] is None
    assert tiny.symbols == ("A", "B")
    assert tiny.truth is None


def test_parquet_round_trip(tiny: Tape, tmp_path: pathlib.Path) -> None:
    tiny.write(tmp_path / "copy")
    assert sorted(p.name for p in (tmp_path / "copy").iterdir()) == ["news.parquet", "ticks.parquet"]
    again = Tape.read(tmp_path / "copy")
    assert again.ticks.equals(tiny.ticks) and again.news.equals(tiny.news)


def test_truth_is_read_only_when_asked(tmp_path: pathlib.Path) -> None:
    synth_tape(2, 5, seed=1).write(tmp_path / "t")
    assert Tape.read(tmp_path / "t").truth is None
    truth = Tape.read(tmp_path / "t", with_truth=True).truth
    assert truth is not None and truth.height > 0
    with pytest.raises(TapeError, match="missing truth.parquet"):
        Tape.read(write_csv_tape(tmp_path / "csv", TINY_TICKS, TINY_NEWS), with_truth=True)


@pytest.mark.parametrize(("ticks", "news", "reason"), [
    (["A,soon,trade,1,1,,,,"], TINY_NEWS, "ticks has values of the wrong type"),
    (["A,1,cancel,1,1,,,,"], TINY_NEWS, r"unknown kinds \['cancel'\]"),
    (["A,1,trade,,1,,,,"], TINY_NEWS, "trades without a price"),
    ([",1,trade,1,1,,,,"], TINY_NEWS, r"ticks has nulls in \['symbol'\]"),
    (TINY_TICKS, ["n0,1,wire,x,,A", "n0,2,wire,y,,A"], "news ids are not unique"),
    (TINY_TICKS, ["n0,1,wire,x,,"], r"news has nulls in \['symbols'\]"),
])
def test_bad_csv_tapes_raise_tape_error(tmp_path: pathlib.Path, ticks: list[str], news: list[str],
                                        reason: str) -> None:
    folder = write_csv_tape(tmp_path / "bad", ticks, news)
    with pytest.raises(TapeError, match=reason) as caught:
        Tape.read(folder)
    assert caught.value.path == folder


def test_parquet_with_a_missing_or_mistyped_column(tiny: Tape, tmp_path: pathlib.Path) -> None:
    tiny.write(tmp_path / "t")
    tiny.ticks.drop("kind").write_parquet(tmp_path / "t" / "ticks.parquet")
    with pytest.raises(TapeError, match=r"ticks lacks columns \['kind'\]"):
        Tape.read(tmp_path / "t")
    priced_as_text = tiny.ticks.with_columns(pl.col("price").cast(pl.String) + "$")
    priced_as_text.write_parquet(tmp_path / "t" / "ticks.parquet")
    with pytest.raises(TapeError, match="ticks has values of the wrong type"):
        Tape.read(tmp_path / "t")


def test_missing_and_unreadable_files(tmp_path: pathlib.Path) -> None:
    with pytest.raises(TapeError, match="not a tape folder"):
        Tape.read(tmp_path / "nowhere")
    folder = write_csv_tape(tmp_path / "t", TINY_TICKS, TINY_NEWS)
    (folder / "news.csv").unlink()
    with pytest.raises(TapeError, match="missing news.parquet or news.csv"):
        Tape.read(folder)
    (folder / "news.parquet").write_bytes(b"not parquet")
    with pytest.raises(TapeError, match="unreadable") as caught:
        Tape.read(folder)
    assert caught.value.path == folder / "news.parquet"


def test_events_merge_ticks_then_news_at_equal_time(tiny: Tape) -> None:
    order = [(kind, row["ts_ns"], row.get("id") or row["symbol"]) for kind, row in tiny.events()]
    assert order == [("tick", 0, "A"), ("news", 5, "n0"), ("tick", 10 * S, "A"), ("tick", 10 * S, "B"),
                     ("tick", 10 * S, "B"), ("news", 10 * S, "n2"), ("news", 10 * S, "n1"),
                     ("tick", 20 * S, "A"), ("tick", 30 * S, "A")]
    kind, first = next(tiny.events())
    assert kind == "tick" and first == {"symbol": "A", "ts_ns": 0, "kind": "trade", "price": 100.0,
                                        "size": 10.0, "bid_px": None, "bid_sz": None,
                                        "ask_px": None, "ask_sz": None}


def test_events_of_a_synthetic_tape_are_complete_and_ordered() -> None:
    tape = synth_tape(3, 10, seed=5)
    events = list(tape.events())
    assert len(events) == tape.ticks.height + tape.news.height
    assert sum(kind == "news" for kind, _ in events) == tape.news.height
    ts_ns = np.array([row["ts_ns"] for _, row in events])
    assert (np.diff(ts_ns) >= 0).all()


@pytest.mark.parametrize(("symbol", "ts_ns", "horizon_s", "flat_bps", "expected"), [
    ("A", 0, 10, 50, "up"),  # 100 -> 101: +99.5 bps
    ("A", 5 * S, 10, 50, "up"),  # last trade at/before 5 s is 100, at/before 15 s is 101
    ("A", 10 * S, 10, 50, "flat"),  # 101 -> 100.9: -9.9 bps
    ("A", 10 * S, 10, 5, "down"),
    ("A", 0, 0.5, 0, "flat"),  # no new trade within the horizon
    ("A", 20 * S, 10, 0, "flat"),  # ends exactly at the last tick: the quote is no trade
    ("A", 25 * S, 10, 0, None),  # the tape ends before the horizon
    ("A", -1, 1, 0, None),  # no trade at/before
    ("B", 10 * S, 10, 100, "flat"),  # ties: the last B trade (51) is both ends
    ("B", 0, 10, 0, None),
    ("C", 10 * S, 1, 0, None),  # unknown symbol
])
def test_realised_direction(tiny: Tape, symbol: str, ts_ns: int, horizon_s: float,
                            flat_bps: float, expected: str | None) -> None:
    assert tiny.realised_direction(symbol, ts_ns, horizon_s, flat_bps) == expected
    forecasts = pl.DataFrame({"symbol": [symbol], "ts_ns": [ts_ns]})
    assert tiny.realised_directions(forecasts, horizon_s, flat_bps).to_list() == [expected]


def test_vectorised_equals_scalar_on_a_synthetic_tape() -> None:
    tape = synth_tape(3, 8, seed=9)
    rng = np.random.default_rng(0)
    start_ns = tape.ticks.get_column("ts_ns").min()
    forecasts = pl.DataFrame({
        "symbol": rng.choice(["ACME", "BOLT", "CRUX", "NONE"], 400),
        "ts_ns": start_ns + rng.integers(-5 * S, 9 * 60 * S, 400),
        "horizon_s": rng.choice([1.0, 30.0, 60.0, 300.0], 400),
        "flat_bps": rng.choice([0.0, 2.0, 10.0], 400),
    })
    realised = tape.realised_directions(forecasts)
    scalar = [tape.realised_direction(*row) for row in forecasts.iter_rows()]
    assert realised.name == "realised" and realised.to_list() == scalar
    assert {"up", "down", "flat", None} <= set(scalar)


def test_realised_directions_of_an_empty_tape_are_null() -> None:
    empty = Tape.from_frames(pl.DataFrame(schema=TICK_SCHEMA), synth_tape(1, 1, seed=0).news.clear())
    forecasts = pl.DataFrame({"symbol": ["A"], "ts_ns": [0]})
    assert empty.realised_directions(forecasts, 60, 1).to_list() == [None]
    assert empty.realised_direction("A", 0, 60, 1) is None
