import pytest

from agents.config import AgentsConfig
from agents.features import TickWindow
from agents.offline import fired_triggers
from agents.processor import LateEventError, Processor
from schemas import NewsItem, Quote, Trade

S = 1_000_000_000
T0 = 1_767_623_400 * S  # 2026-01-05 14:30:00 UTC, a multiple of 60 s


def trade(ts_s, price, sym="ACME", size=1.0):
    return Trade(sym, T0 + int(ts_s * S), price, size)


def news(nid, ts_s, *syms, headline="ACME beats estimates"):
    return NewsItem(nid, T0 + int(ts_s * S), "wire", headline, tuple(syms or ("ACME",)))


def test_cadence_fires_once_a_later_tick_arrives_without_look_ahead():
    p = Processor(AgentsConfig(cadence_s=60), gated=False)
    assert p.on_tick(trade(0, 100.0), 0) == []        # T0 itself is due only once a later tick arrives
    assert p.on_tick(trade(30, 101.0), 0)[0].ts_ns == T0
    assert p.on_tick(trade(59.9, 102.0), 0) == []
    fired = p.on_tick(trade(61, 150.0), 7)             # a jump after T0+60 must not be seen at T0+60
    assert [f.ts_ns for f in fired] == [T0 + 60 * S]
    assert fired[0].features.last_price == 102.0 and fired[0].ingest_wall_ns == 7


def test_gap_fires_every_missed_cadence_step_in_order():
    p = Processor(AgentsConfig(cadence_s=60), gated=False)
    p.on_tick(trade(1, 100.0), 0)
    fired = p.on_tick(trade(200, 100.0), 0)
    assert [f.ts_ns - T0 for f in fired] == [60 * S, 120 * S, 180 * S]


def test_news_trigger_waits_for_later_tick_and_only_sees_past_news():
    p = Processor(AgentsConfig(cadence_s=3600), gated=False)
    p.on_tick(trade(1, 100.0), 0)
    assert p.on_news(news("n1", 10), "ACME", 0) == []
    assert p.on_news(news("n2", 20), "ACME", 0) == []
    fired = p.on_tick(trade(15, 100.0), 0)
    assert [(f.trigger, f.news_id) for f in fired] == [("news", "n1")]
    assert [n.id for n in fired[0].news] == ["n1"]     # n2 is in the future of T=10


def test_late_news_fires_at_once_and_duplicates_are_ignored():
    p = Processor(AgentsConfig(cadence_s=3600), gated=False)
    p.on_tick(trade(1, 100.0), 0)
    p.on_tick(trade(50, 101.0), 0)
    fired = p.on_news(news("n1", 20), "ACME", 0)
    assert len(fired) == 1 and fired[0].features.last_price == 100.0
    assert p.on_news(news("n1", 20), "ACME", 0) == []


def test_no_trigger_before_first_trade_and_late_ticks_rejected():
    p = Processor(AgentsConfig(cadence_s=60), gated=False)
    p.on_tick(Quote("ACME", T0 - 10 * S, 99.0, 1, 99.1, 1), 0)
    assert p.on_tick(trade(61, 100.0), 0) == []         # T0 had no trade at or before it
    with pytest.raises(LateEventError):
        p.on_tick(trade(30, 100.0), 0)


def test_features_returns_and_spread():
    w = TickWindow(keep_ns=300 * S)
    for ts, px in [(0, 100.0), (100, 101.0), (250, 102.0), (290, 103.0)]:
        w.add(trade(ts, px))
    w.add(Quote("ACME", T0 + 295 * S, 102.9, 1, 103.1, 1))
    f = w.features_at(T0 + 300 * S, 60 * S, 300 * S)
    assert f.last_price == 103.0 and f.trades_short == 2
    assert f.ret_short == pytest.approx(__import__("math").log(103 / 101))
    assert f.ret_long == pytest.approx(__import__("math").log(103 / 100))
    assert f.spread_bps == pytest.approx(0.2 / 103.0 * 1e4)


def test_trigger_set_independent_of_news_arrival_order():
    ticks = [("tick", {"symbol": "ACME", "ts_ns": T0 + i * 7 * S, "price": 100.0 + i % 3, "size": 1.0,
                       "kind": "trade"}) for i in range(60)]
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"]
    items = [("news", {"id": f"n{i}", "ts_ns": T0 + i * 41 * S, "source": "w", "headline": f"{w} wins a deal",
                       "symbols": ["ACME", "BOLT"]}) for i, w in enumerate(words)]
    in_order = sorted(ticks + items, key=lambda e: e[1]["ts_ns"])
    news_first = items + ticks
    ids = {f.id for f in fired_triggers(in_order, AgentsConfig())}
    assert ids == {f.id for f in fired_triggers(news_first, AgentsConfig())}
    # cadence at 0, 60, ..., 360 s (last tick at 413 s) and each of the 8 news for ACME; BOLT has no ticks
    assert len(ids) == 7 + 8


MS = 1_000_000


def test_gated_trigger_waits_for_news_watermark_from_every_news_partition():
    p = Processor(AgentsConfig(cadence_s=60, news_grace_ms=10_000), news_origins=2)
    p.on_tick(trade(1, 100.0), 0)
    assert p.on_tick(trade(61, 101.0), 0) == []            # tick-complete for T0+60, but news not yet
    assert p.on_news_watermark(T0 + 61 * S, 0, 0) == []    # only one of the two news partitions
    p.on_news(news("n1", 59), "ACME", 0)                   # news before T arrives late but in time
    fired = p.on_news_watermark(T0 + 61 * S, 1, 0)
    assert [f.ts_ns for f in fired if f.trigger == "cadence"] == [T0 + 60 * S]
    cadence = next(f for f in fired if f.trigger == "cadence")
    assert [n.id for n in cadence.news] == ["n1"]


def test_grace_and_lateness_bound_release_without_watermarks():
    p = Processor(AgentsConfig(cadence_s=60, news_grace_ms=500, news_idle_ms=0, allowed_lateness_s=120))
    p.on_tick(trade(1, 100.0), 1_000 * MS)
    assert p.on_tick(trade(61, 100.0), 1_000 * MS) == []
    assert p.release_all(1_400 * MS) == []
    assert [f.ts_ns for f in p.release_all(1_500 * MS)] == [T0 + 60 * S]
    p.on_tick(trade(121, 100.0), 2_000 * MS)               # T0+120 held ...
    assert [f.ts_ns for f in p.on_tick(trade(250, 100.0), 2_000 * MS)] == [T0 + 120 * S]  # ... until too late


def test_news_beyond_allowed_lateness_is_rejected_as_late():
    p = Processor(AgentsConfig(allowed_lateness_s=60))
    p.on_tick(trade(1, 100.0), 0)
    p.on_tick(trade(200, 100.0), 0)
    with pytest.raises(LateEventError) as err:
        p.on_news(news("old", 100), "ACME", 0)
    assert err.value.reason == "late"


def test_gated_live_order_gives_the_same_forecasts_as_the_tape_order():
    """News delivered after the ticks that pass it, but before the watermark: same triggers, same news."""
    ticks = [("tick", {"symbol": "ACME", "ts_ns": T0 + i * 5 * S, "price": 100.0 + i % 4, "size": 1.0,
                       "kind": "trade"}) for i in range(100)]
    items = [("news", {"id": f"n{i}", "ts_ns": T0 + (i * 53 + 2) * S, "source": "w", "headline": f"h{i}",
                       "symbols": ["ACME"]}) for i in range(9)]
    offline = {f.id: f for f in fired_triggers(sorted(ticks + items, key=lambda e: e[1]["ts_ns"]), AgentsConfig())}
    live = Processor(AgentsConfig(news_grace_ms=10**9))
    got, pending = [], list(items)
    for _, row in ticks:                     # news reaches the agents 30 s (event time) after its ticks,
        while pending and pending[0][1]["ts_ns"] + 30 * S <= row["ts_ns"]:   # watermarks trail by 40 s
            got += live.on_news(NewsItem.from_obj(pending.pop(0)[1]), "ACME", 0)
        got += live.on_tick(Trade.from_obj(row), 0)
        got += live.on_news_watermark(row["ts_ns"] - 40 * S, 0, 0)
    for _, row in pending:
        got += live.on_news(NewsItem.from_obj(row), "ACME", 0)
    got += live.on_news_watermark(T0 + 10_000 * S, 0, 0)
    assert len(got) == len(offline) and {f.id: f for f in got} == offline


def test_grace_does_not_apply_while_watermarks_keep_coming():
    """A backlogged news stream still sending watermarks is waited for, not overtaken by the grace."""
    p = Processor(AgentsConfig(cadence_s=60, news_grace_ms=500, news_idle_ms=5_000))
    p.on_tick(trade(1, 100.0), 0)
    p.on_news_watermark(T0 + 2 * S, 0, 0)
    p.on_tick(trade(61, 100.0), 100 * MS)                  # T0+60 tick-complete at 0.1 s
    assert p.on_news_watermark(T0 + 30 * S, 0, 900 * MS) == []    # news still behind T at 0.9 s
    assert p.release_all(4_000 * MS) == []                 # 3.9 s after ready, but watermarks came recently
    assert [f.ts_ns for f in p.release_all(5_900 * MS)] == [T0 + 60 * S]   # 5 s without any: idle


def test_at_start_watermarks_are_awaited_for_news_idle_ms():
    p = Processor(AgentsConfig(cadence_s=60, news_grace_ms=500, news_idle_ms=3_000))
    p.on_tick(trade(1, 100.0), 0)
    p.on_tick(trade(61, 100.0), 0)
    assert p.release_all(2_900 * MS) == []                  # no watermark yet, but the feed may send some
    assert [f.ts_ns for f in p.release_all(3_000 * MS)] == [T0 + 60 * S]


def test_ticks_out_of_order_within_lateness_give_the_in_order_forecasts():
    import random

    cfg = AgentsConfig(cadence_s=30, tick_lateness_ms=3_000)
    ticks = [trade(i * 0.7, 100.0 + (i * 37 % 11) / 10) for i in range(400)]
    shuffled = list(ticks)
    rng = random.Random(3)
    for i in range(1, len(shuffled) - 1, 3):           # swap neighbours 0.7 s apart: within 3 s
        if rng.random() < 0.7:
            shuffled[i], shuffled[i + 1] = shuffled[i + 1], shuffled[i]
    assert shuffled != ticks

    def run(seq):
        p = Processor(cfg, gated=False)
        return [f for t in seq for f in p.on_tick(t, 0)]

    in_order, out_of_order = run(ticks), run(shuffled)
    assert len(in_order) > 5 and out_of_order == in_order
    p = Processor(cfg, gated=False)
    p.on_tick(trade(100, 100.0), 0)
    with pytest.raises(LateEventError):
        p.on_tick(trade(96.9, 100.0), 0)                # more than 3 s behind the newest tick


def test_news_block_is_built_on_arrival_and_prefixes_the_trigger_prompt():
    from agents.prompt import build_prompt

    p = Processor(AgentsConfig(cadence_s=60, news_grace_ms=0, news_idle_ms=0))
    p.on_tick(trade(1, 100.0), 0)
    p.on_news(news("n1", 10, headline="ACME wins a contract"), "ACME", 0)
    warm = p.warmup("ACME", 5)
    assert warm.kind == "warmup" and "ACME wins a contract" in warm.prompt
    fired = p.on_tick(trade(61, 100.0), 0) + p.release_all(10**12)
    request = p.request(next(f for f in fired if f.trigger == "cadence"), 7)
    assert request.prompt.startswith(warm.prompt) and len(request.prompt) > len(warm.prompt)
    f = next(f for f in fired if f.trigger == "cadence")
    assert request.prompt == build_prompt("ACME", f.ts_ns, f.features, f.news, 600, 60, f.ret_since_news)
    assert Processor(AgentsConfig(warmup=False)).warmup("ACME", 5) is None


def test_oversized_prompts_drop_their_oldest_news_and_say_so():
    cfg = AgentsConfig(cadence_s=3600, max_prompt_chars=700)
    p = Processor(cfg, gated=False)
    p.on_tick(trade(1, 100.0), 0)
    for i in range(5):
        p.on_news(news(f"n{i}", 2 + i, headline=f"ACME headline number {i} " + "x" * 120), "ACME", 0)
    fired = p.on_tick(trade(30, 100.0), 0)
    request = p.request(fired[-1], 0)       # the news trigger of n4 sees all five
    assert len(request.prompt) <= 700 and request.news_ids[-1] == "n4"
    kept = len(request.news_ids)
    assert 1 <= kept < 5 and request.news_ids == ("n0", "n1", "n2", "n3", "n4")[-kept:]   # oldest went first
    assert request.features["news_dropped"] == 5 - kept and "headline number 0" not in request.prompt
    roomy = Processor(AgentsConfig(cadence_s=3600), gated=False)
    roomy.on_tick(trade(1, 100.0), 0)
    roomy.on_news(news("n9", 2), "ACME", 0)
    assert "news_dropped" not in roomy.request(roomy.on_tick(trade(30, 100.0), 0)[-1], 0).features


def test_requests_count_the_news_new_since_the_previous_cadence_and_carry_a_longer_deep_prompt():
    cfg = AgentsConfig(cadence_s=60, max_news_in_prompt=2, deep_max_news=4, deep_history_min=3)
    p = Processor(cfg, gated=False)
    p.on_tick(trade(0, 100.0), 0)
    for i, at in enumerate((10, 20, 30, 130)):
        p.on_news(news(f"n{i}", at, headline=f"ACME item {i}"), "ACME", 0)
    fired = {f.ts_ns: f for second in range(5, 250, 5) for f in p.on_tick(trade(second, 100 + second / 100), 0)
             if f.trigger == "cadence"}
    at_120, at_180 = (p.request(fired[T0 + s * S], 0) for s in (120, 180))
    assert at_120.news_ids == ("n1", "n2") and at_120.new_news == 0   # both from before T-60 s
    assert at_180.news_ids == ("n2", "n3") and at_180.new_news == 1   # n3 came at T0+130 s
    deep = at_180.prompt_deep
    assert all(f"ACME item {i}" in deep for i in range(4)) and "ACME item 0" not in at_180.prompt
    assert "Price, last 3 minutes (bp per minute, oldest first): +5" in deep and deep.endswith(at_180.prompt.split("\n")[-1])
