"""The whole pipeline on the real embedded broker and Redis: a synthetic tape in, forecasts out."""
import asyncio
from collections import Counter

import polars as pl
import pytest

from agents.config import AgentsConfig
from agents.lab.demo import DemoOptions, run_demo
from agents.offline import fired_triggers, rejected_news
from streams.chaos import malformed_records
from streams.latest import LatestStore
from streams.synth import write_synth_tape
from streams.tape import Tape

pytestmark = pytest.mark.integration
BAD = 15


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, kafka_bootstrap, redis_url):
    tape_dir = tmp_path_factory.mktemp("tape")
    write_synth_tape(tape_dir, 3, 12, seed=11)
    out = tmp_path_factory.mktemp("demo")
    opts = DemoOptions(out, tape_dir, speed=None, partitions=3, bootstrap=kafka_bootstrap, redis_url=redis_url,
                       engine="hf", timeout_s=180, inject_bad=BAD, bundle_ms=500)
    return Tape.read(tape_dir), out, run_demo(opts)


def test_every_trigger_gets_exactly_one_forecast(demo_run):
    tape, out, report = demo_run
    expected = {f.id for f in fired_triggers(tape.events(), AgentsConfig())}
    frame = pl.read_parquet(out / "forecasts.parquet")
    assert report["triggers"] == len(expected) > 20
    assert report["missing"] == 0 and report["unexpected"] == 0
    assert frame["id"].n_unique() == frame.height == len(expected)
    assert set(frame["id"]) == expected
    assert set(frame["trigger"]) == {"cadence", "news"}
    assert report["worker_exit_codes"] == {"agents": 0, "inference": 0}


def test_no_forecast_uses_news_from_its_future(demo_run):
    tape, out, _ = demo_run
    news_ts = dict(zip(tape.news["id"], tape.news["ts_ns"]))
    frame = pl.read_parquet(out / "forecasts.parquet")
    used = [(row["ts_ns"], nid) for row in frame.iter_rows(named=True) for nid in row["news_ids"]]
    assert used, "some forecasts must have used news"
    assert all(news_ts[nid] <= ts for ts, nid in used)


def test_forecasts_are_the_offline_computation(demo_run):
    """Watermarks make the live run see exactly the news the in-order tape gives each trigger."""
    tape, out, _ = demo_run
    offline = {f.id: tuple(n.id for n in f.news) for f in fired_triggers(tape.events(), AgentsConfig())}
    frame = pl.read_parquet(out / "forecasts.parquet")
    assert {row["id"]: tuple(row["news_ids"]) for row in frame.iter_rows(named=True)} == offline


def test_bad_records_land_in_deadletter_with_their_reason(demo_run):
    tape, _, report = demo_run
    expected = Counter(reason for _, _, reason in malformed_records(BAD)) + rejected_news(tape.events())
    assert report["deadletters"] == dict(expected)


def test_report_figures_and_latest_in_redis(demo_run, redis_url):
    tape, out, report = demo_run
    assert report["events"] == tape.ticks.height + tape.news.height
    assert 0.0 <= report["accuracy"] <= 1.0 and report["scored"] > 0
    assert 0 < report["latency_ms"]["p50"] <= report["latency_ms"]["p99"]
    frame = pl.read_parquet(out / "forecasts.parquet")
    newest = frame.sort("ts_ns").group_by("symbol").agg(pl.col("ts_ns").last())

    async def read_all():
        store = LatestStore.from_url(redis_url, report["topic_prefix"])
        try:
            return {s: await store.read(s) for s in newest["symbol"]}
        finally:
            await store.close()

    latest = asyncio.run(read_all())
    assert {s: r["ts_ns"] for s, r in latest.items()} == dict(newest.iter_rows())
