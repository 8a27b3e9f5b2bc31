"""Examples from tapes: the agents' own requests, labels only from after each prompt, time splits."""
from __future__ import annotations

import polars as pl
import pytest

from agents.config import NS_PER_S, AgentsConfig
from agents.lab.examples import Example, build_examples, requests_from_tape, split_by_time, with_adapters
from agents.offline import fired_triggers
from agents.processor import Processor
from streams.synth import synth_tape
from streams.tape import Tape

CFG = AgentsConfig()


@pytest.fixture(scope="module")
def tape() -> Tape:
    return synth_tape(symbols=3, minutes=12, seed=5)


@pytest.fixture(scope="module")
def examples(tape) -> list[Example]:
    return build_examples(tape, CFG)


def test_requests_are_the_processors_own_with_the_deep_prompt(tape):
    processor = Processor(CFG, gated=False)
    expected = [processor.request(f, 0) for f in fired_triggers(tape.events(), CFG, processor=processor)]
    assert requests_from_tape(tape, CFG) == expected
    assert {r.trigger for r in expected} == {"cadence", "news"}
    assert all(r.prompt_deep and "Price, last" in r.prompt_deep and r.prompt_deep != r.prompt for r in expected)


def test_labels_are_the_realised_move_after_the_prompt(tape, examples):
    assert len(examples) > 30
    for example in examples[::7]:
        direction = tape.realised_direction(example.request.symbol, example.ts_ns, CFG.horizon_s, CFG.flat_bps)
        assert example.label == direction
    assert [e.ts_ns for e in examples] == sorted(e.ts_ns for e in examples)


def test_no_look_ahead_prompts_and_labels_ignore_later_ticks(tape, examples):
    """Cutting the tape after T + horizon changes no example whose label window ends by then."""
    cut_ns = examples[len(examples) // 2].ts_ns + CFG.horizon_s * NS_PER_S
    kept = Tape.from_frames(tape.ticks.filter(pl.col("ts_ns") <= cut_ns + 1),
                            tape.news.filter(pl.col("ts_ns") <= cut_ns), tape.truth)
    early = {e.request.id: e for e in build_examples(kept, CFG)}
    wanted = [e for e in examples if e.ts_ns + CFG.horizon_s * NS_PER_S <= kept.end_ns]
    assert wanted and all(early[e.request.id] == e for e in wanted)


def test_split_keeps_training_labels_out_of_the_test_part(examples):
    split = split_by_time(examples, 0.3, CFG.horizon_s)
    horizon_ns = CFG.horizon_s * NS_PER_S
    assert split.train and split.test
    assert max(e.ts_ns for e in split.train) + horizon_ns <= split.split_ts_ns < min(e.ts_ns for e in split.test)
    assert len(split.train) + len(split.test) <= len(examples)
    with pytest.raises(ValueError):
        split_by_time(examples, 1.0, CFG.horizon_s)


def test_sentiment_labels_follow_the_headline_of_the_trigger(tape):
    examples = build_examples(tape, CFG, "sentiment")
    truth = dict(zip(tape.truth["news_id"].to_list(), tape.truth["sentiment"].to_list()))
    first = dict(zip(tape.news["id"].to_list(), (s[0] for s in tape.news["symbols"].to_list())))
    assert examples and all(e.request.trigger == "news" for e in examples)
    for e in examples:
        news_id = e.request.news_ids[-1]
        expected = {1: "up", -1: "down", 0: "flat"}[truth[news_id]] if first[news_id] == e.request.symbol else "flat"
        assert e.label == expected


def test_sentiment_needs_truth_and_tasks_are_checked(tape):
    bare = Tape.from_frames(tape.ticks, tape.news)
    with pytest.raises(ValueError, match="truth"):
        build_examples(bare, CFG, "sentiment")
    with pytest.raises(ValueError, match="task"):
        build_examples(tape, CFG, "volatility")


def test_adapter_routing_goes_through_the_agents_config(tape):
    routed = with_adapters(CFG, {"ACME": "direction-industrials"}, "direction-all")
    adapters = {r.symbol: r.adapter for r in requests_from_tape(tape, routed)}
    assert adapters == {"ACME": "direction-industrials", "BOLT": "direction-all", "CRUX": "direction-all"}
