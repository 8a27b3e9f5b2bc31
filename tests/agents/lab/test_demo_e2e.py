"""The whole pipeline on the real embedded broker and Redis: a synthetic tape in, forecasts out."""
import asyncio
import subprocess
import sys
from collections import Counter
from pathlib import Path

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
    assert report["worker_exit_codes"] == {"agents": 0, "inference": 0, "inference-deep": 0}


def test_both_tier_pools_answer_and_the_report_keeps_each_latest_revision(demo_run):
    _, out, report = demo_run
    frame = pl.read_parquet(out / "forecasts.parquet")
    assert sum(report["tiers"].values()) == frame.height and report["awaiting_deep"] == 0
    assert report["tiers"].get("deep", 0) > 0, "some forecasts must have been escalated and answered deep"
    deep = frame.filter(pl.col("tier") == "deep")
    assert deep["revision"].to_list() == [1] * deep.height and not frame["escalated"].any()
    assert report["deep_share"] == round(deep.height / frame.height, 4)
    assert report["skipped_llm"] == frame.filter(pl.col("status") == "skipped").height


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


def files_under(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else b"" for p in folder.rglob("*")}


def test_a_demo_run_leaves_the_current_folder_as_it_was(tmp_path):
    """`finllm demo` as a user runs it (its own embedded broker and Redis) writes under --out and the
    cache only: its workers' files go to its work folder (out/run), none to the folder it started in."""
    here, tape = tmp_path / "here", tmp_path / "tape"
    here.mkdir()
    (here / "notes.txt").write_text("the user's own file")
    write_synth_tape(tape, 2, 6, seed=3)
    before = files_under(here)
    done = subprocess.run([sys.executable, "-m", "agents.cli", "demo", "--out", "demo-out", "--tape", str(tape),
                           "--max", "--partitions", "1"], cwd=here, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    after = files_under(here)
    assert {k: v for k, v in after.items() if not k.startswith("demo-out")} == before
    assert {"demo-out/report.json", "demo-out/forecasts.parquet", "demo-out/run/agents.log"} <= after.keys()
