"""Synthetic tapes: determinism, market sanity, volatility clusters, and news that explains jumps."""
from __future__ import annotations

import pathlib
import re
import time

import numpy as np
import polars as pl
import pytest

from streams.synth import (COMPANIES, HEADLINES, SynthConfig, SAMPLE_MINUTES, SAMPLE_SEED, SAMPLE_SYMBOLS,
                           START_NS, sample_tape_path, synth_tape)
from streams.tape import Tape

S = 1_000_000_000
TAPE_FILES = ("ticks.parquet", "news.parquet", "truth.parquet")


@pytest.fixture(scope="module")
def tape() -> Tape:
    return synth_tape(8, 60, seed=3)


def trades(tape: Tape) -> pl.DataFrame:
    return tape.ticks.filter(pl.col("kind") == "trade")


def bar_returns(tape: Tape, bar_s: int) -> pl.DataFrame:
    """Log returns of the last trade price per `bar_s` bar: symbol, bar, log_return, in bar order."""
    bars = trades(tape).with_columns(bar=(pl.col("ts_ns") - START_NS) // (bar_s * S))
    closes = bars.group_by("symbol", "bar").agg(pl.col("price").last()).sort("symbol", "bar")
    log_return = pl.col("price").log().diff().over("symbol")
    return closes.with_columns(log_return=log_return).drop_nulls("log_return")


def news_with_truth(tape: Tape) -> pl.DataFrame:
    assert tape.truth is not None
    return tape.news.join(tape.truth, left_on="id", right_on="news_id")


def test_same_seed_same_bytes(tmp_path: pathlib.Path) -> None:
    for name in ("first", "second"):
        synth_tape(3, 10, seed=42).write(tmp_path / name)
    for file in TAPE_FILES:
        assert (tmp_path / "first" / file).read_bytes() == (tmp_path / "second" / file).read_bytes()
    synth_tape(3, 10, seed=43).write(tmp_path / "other")
    other = (tmp_path / "other" / "ticks.parquet").read_bytes()
    assert other != (tmp_path / "first" / "ticks.parquet").read_bytes()


def test_symbols_are_a_fixed_ticker_list() -> None:
    tickers = [ticker for ticker, _ in COMPANIES]
    assert len(set(tickers)) == len(tickers) >= 50
    assert all(re.fullmatch(r"[A-Z]{4}", ticker) for ticker in tickers)
    assert synth_tape(3, 1, seed=0).symbols == ("ACME", "BOLT", "CRUX")
    with pytest.raises(ValueError, match="symbols must be in"):
        synth_tape(len(COMPANIES) + 1, 1, seed=0)


def test_ticks_are_sane(tape: Tape) -> None:
    quotes = tape.ticks.filter(pl.col("kind") == "quote")
    assert (quotes.get_column("ask_px") > quotes.get_column("bid_px")).all()
    assert quotes.select((pl.col("bid_px", "bid_sz", "ask_sz") > 0).all()).row(0) == (True, True, True)
    assert quotes.select(pl.col("price", "size").null_count()).row(0) == (quotes.height, quotes.height)
    traded = trades(tape)
    assert traded.select((pl.col("price", "size") > 0).all()).row(0) == (True, True)
    assert traded.get_column("bid_px").null_count() == traded.height
    ts_ns = tape.ticks.get_column("ts_ns")
    assert ts_ns.is_sorted() and ts_ns.min() >= START_NS and ts_ns.max() < START_NS + 3600 * S


def test_trade_rate_is_one_to_two_per_second(tape: Tape) -> None:
    per_symbol = trades(tape).group_by("symbol").len().get_column("len") / 3600
    assert per_symbol.min() > 0.9 and per_symbol.max() < 2.1


def test_volatility_clusters(tape: Tape) -> None:
    """Squared 5 s returns, with the bars holding a jump removed, are positively autocorrelated."""
    jump_bar = ((pl.col("jump_ts_ns") - START_NS) // (5 * S)).alias("bar")
    jump_bars = news_with_truth(tape).drop_nulls("jump_ts_ns").select(
        pl.col("jump_symbol").alias("symbol"), jump_bar)
    returns = bar_returns(tape, 5).join(jump_bars, on=["symbol", "bar"], how="anti")
    autocorrelations = []
    for (_, ), group in returns.group_by("symbol"):
        squared = group.get_column("log_return").to_numpy() ** 2
        centred = squared - squared.mean()
        autocorrelations += [centred[:-lag] @ centred[lag:] / (centred @ centred) for lag in range(1, 6)]
    assert np.mean(autocorrelations) > 0.03


def test_spread_widens_with_volatility(tape: Tape) -> None:
    spread_bps = (pl.col("ask_px") / pl.col("bid_px")).log() * 1e4
    minute = ((pl.col("ts_ns") - START_NS) // (60 * S)).alias("bar")
    quotes = tape.ticks.filter(pl.col("kind") == "quote")
    spreads = quotes.group_by("symbol", minute).agg(spread_bps.mean().alias("spread_bps"))
    vols = bar_returns(tape, 1).group_by("symbol", pl.col("bar") // 60).agg(
        pl.col("log_return").std().alias("vol"))
    joined = spreads.join(vols, on=["symbol", "bar"])
    correlation = joined.group_by("symbol").agg(pl.corr("spread_bps", "vol", method="spearman"))
    assert correlation.get_column("spread_bps").min() > 0.3


def test_news_is_sorted_unique_and_well_formed(tape: Tape) -> None:
    news = tape.news
    assert news.get_column("ts_ns").is_sorted() and news.get_column("id").is_unique().all()
    counts = news.get_column("symbols").list.len()
    assert counts.min() == 1 and counts.max() == 2
    assert set(news.get_column("symbols").explode().to_list()) <= set(tape.symbols)
    assert news.get_column("source").n_unique() >= 4
    assert 0 < news.get_column("body").null_count() < news.height


def test_headlines_match_their_sentiment(tape: Tape) -> None:
    patterns = {sentiment: [re.escape(t).replace(r"\{NAME\}", ".+").replace(r"\{OTHER\}", ".+")
                            for t in templates] for sentiment, templates in HEADLINES.items()}
    rows = news_with_truth(tape)
    for headline, sentiment in rows.select("headline", "sentiment").iter_rows():
        assert any(re.fullmatch(pattern, headline) for pattern in patterns[sentiment]), headline
    assert set(rows.get_column("sentiment").unique()) == {-1, 0, 1}


def test_the_configured_share_of_news_explains_a_jump(tape: Tape) -> None:
    truth = tape.truth
    assert truth is not None
    assert truth.get_column("news_id").to_list() == tape.news.get_column("id").to_list()
    share = truth.get_column("jump_ts_ns").is_not_null().mean()
    assert abs(share - SynthConfig().explaining_share) <= 0.1


def test_jumps_follow_explaining_news_with_its_sign(tape: Tape) -> None:
    jumps = news_with_truth(tape).drop_nulls("jump_ts_ns")
    minute_vol = bar_returns(tape, 60).group_by("symbol").agg(
        (pl.col("log_return").abs().median() * 1.4826).alias("minute_vol"))
    jumps = jumps.join(minute_vol, left_on="jump_symbol", right_on="symbol")
    for row in jumps.iter_rows(named=True):
        low, high = SynthConfig().jump_delay_s
        assert low * S <= row["jump_ts_ns"] - row["ts_ns"] <= high * S
        assert row["jump_symbol"] == row["symbols"][0]
        assert np.sign(row["jump_return"]) == row["sentiment"] != 0
        assert abs(row["jump_return"]) > 3 * row["minute_vol"]
        moved = tape.realised_direction(row["jump_symbol"], row["jump_ts_ns"] - 1, 5, 0)
        assert moved == {1: "up", -1: "down"}[row["sentiment"]]


def test_a_news_reader_beats_a_news_blind_forecaster(tape: Tape) -> None:
    """Calling the headline's direction over 5 minutes beats any constant call."""
    signed = news_with_truth(tape).filter(pl.col("sentiment") != 0)
    forecasts = signed.select(pl.col("symbols").list.first().alias("symbol"), "ts_ns", "sentiment")
    realised = tape.realised_directions(forecasts, horizon_s=300, flat_bps=10)
    called = forecasts.get_column("sentiment").replace_strict({1: "up", -1: "down"},
                                                              return_dtype=pl.String)
    reader_hits = (called == realised).mean()
    best_constant_hits = realised.value_counts().get_column("count").max() / realised.len()
    assert reader_hits > 0.6 and reader_hits > best_constant_hits + 0.15


def test_twenty_symbols_for_an_hour_generate_in_seconds() -> None:
    started = time.perf_counter()
    big = synth_tape(20, 60, seed=1)
    assert time.perf_counter() - started < 10
    assert big.ticks.height > 20 * 3600 * 2 and len(big.symbols) == 20


def test_bundled_sample_tape() -> None:
    folder = sample_tape_path()
    assert sum(path.stat().st_size for path in folder.iterdir()) < 1_000_000
    sample = Tape.read(folder, with_truth=True)
    assert len(sample.symbols) == SAMPLE_SYMBOLS
    span_ns = sample.ticks.get_column("ts_ns").max() - START_NS
    assert (SAMPLE_MINUTES - 1) * 60 * S < span_ns <= SAMPLE_MINUTES * 60 * S
    fresh = synth_tape(SAMPLE_SYMBOLS, SAMPLE_MINUTES, SAMPLE_SEED)
    assert fresh.news.equals(sample.news) and fresh.ticks.height == sample.ticks.height


def test_a_tape_without_news_is_the_same_market() -> None:
    loud, quiet = synth_tape(3, 10, seed=5), synth_tape(3, 10, seed=5, news=False)
    assert loud.news.height > 0 and quiet.news.height == 0 and quiet.truth.height == 0
    assert quiet.ticks.equals(loud.ticks)
