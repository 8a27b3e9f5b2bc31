"""Training and evaluation examples from a tape, built exactly as the live agents build prompts.

Each example is one fired trigger (`agents.offline.fired_triggers`) with the prompt and numeric
forecast of `Processor.request` — the same code a replay runs through Kafka. Its label is read only
from what happens AFTER the prompt's `ts_ns`: the realised direction over the horizon
(`Tape.realised_directions`), or for the `sentiment` task the generator's sentiment of the news
item that fired the trigger. Splits are by event time, and training examples whose horizon
reaches into the evaluation part are dropped (no label leaks across the split).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np
import polars as pl

from agents.config import NS_PER_S, AgentsConfig
from agents.lab import TASKS
from agents.offline import fired_triggers
from agents.processor import Processor
from schemas import DIRECTIONS, InferenceRequest
from streams.tape import Tape

SENTIMENT_LABELS = {1: "up", -1: "down", 0: "flat"}


@dataclass(frozen=True, slots=True)
class Example:
    request: InferenceRequest   # prompt, numeric forecast, features, adapter: as the agents send it
    label: str                  # "up" / "down" / "flat"

    @property
    def ts_ns(self) -> int:
        return self.request.ts_ns


@dataclass(frozen=True, slots=True)
class Split:
    train: tuple[Example, ...]
    test: tuple[Example, ...]
    split_ts_ns: int


def requests_from_tape(tape: Tape, cfg: AgentsConfig) -> list[InferenceRequest]:
    """Every request a replay of `tape` makes, in firing order (wall times are zero), each built when it
    fires by the processor that fired it (so it has the deep tier's prompt, as the agents' requests do)."""
    processor = Processor(cfg, gated=False)
    return [processor.request(fired, 0) for fired in fired_triggers(tape.events(), cfg, processor=processor)]


def build_examples(tape: Tape, cfg: AgentsConfig, task: str = "direction") -> list[Example]:
    """Labelled examples in event-time order; requests whose label is unknown are left out."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    return label_requests(tape, requests_from_tape(tape, cfg), cfg, task)


def label_requests(tape: Tape, requests: Sequence[InferenceRequest], cfg: AgentsConfig, task: str) -> list[Example]:
    """`requests` of `tape` as labelled examples in event-time order (build requests once for several tasks)."""
    ordered = sorted(requests, key=lambda r: (r.ts_ns, r.symbol, r.id))
    if task == "sentiment":
        ordered = [r for r in ordered if r.trigger == "news"]
    labels = direction_labels(tape, ordered, cfg) if task == "direction" else sentiment_labels(tape, ordered)
    return [Example(r, label) for r, label in zip(ordered, labels) if label is not None]


def direction_labels(tape: Tape, requests: Sequence[InferenceRequest], cfg: AgentsConfig) -> list[str | None]:
    """The move over [ts_ns, ts_ns + horizon] of each request's symbol (None past the tape's end)."""
    if not requests:
        return []
    frame = pl.DataFrame({"symbol": [r.symbol for r in requests], "ts_ns": [r.ts_ns for r in requests]},
                         schema={"symbol": pl.String, "ts_ns": pl.Int64})
    return tape.realised_directions(frame, horizon_s=cfg.horizon_s, flat_bps=cfg.flat_bps).to_list()


def sentiment_labels(tape: Tape, requests: Sequence[InferenceRequest]) -> list[str | None]:
    """The generator's sentiment of the news that fired each request, for the company it is about.

    A headline's sentiment is about its first symbol; for a second named company the label is flat.
    """
    if tape.truth is None:
        raise ValueError("the sentiment task needs a tape with truth.parquet (a synthetic tape)")
    sentiment = dict(zip(tape.truth["news_id"].to_list(), tape.truth["sentiment"].to_list()))
    first_symbol = dict(zip(tape.news["id"].to_list(), (s[0] for s in tape.news["symbols"].to_list())))
    return [_sentiment_label(r, sentiment, first_symbol) for r in requests]


def _sentiment_label(request: InferenceRequest, sentiment: dict, first_symbol: dict) -> str | None:
    news_id = request.news_ids[-1] if request.news_ids else None
    if news_id not in sentiment:
        return None
    return SENTIMENT_LABELS[int(sentiment[news_id])] if first_symbol[news_id] == request.symbol else "flat"


def split_by_time(examples: Sequence[Example], test_fraction: float, horizon_s: int) -> Split:
    """Train on the first (1 - test_fraction) of the event-time range, test on the rest.

    Training examples whose horizon ends after the split are dropped, so no training label
    is computed from prices the test part also sees.
    """
    if not 0 < test_fraction < 1:
        raise ValueError("test_fraction must be in (0, 1)")
    if not examples:
        raise ValueError("no examples to split")
    first, last = min(e.ts_ns for e in examples), max(e.ts_ns for e in examples)
    split_ts_ns = first + int((last - first) * (1 - test_fraction))
    horizon_ns = horizon_s * NS_PER_S
    train = tuple(e for e in examples if e.ts_ns + horizon_ns <= split_ts_ns)
    test = tuple(e for e in examples if e.ts_ns > split_ts_ns)
    return Split(train, test, split_ts_ns)


def with_adapters(cfg: AgentsConfig, adapters: dict[str, str], default: str | None) -> AgentsConfig:
    """`cfg` routing each symbol to an adapter (its `adapters` mapping, the pipeline's own routing)."""

    return replace(cfg, adapters=dict(adapters), default_adapter=default)


def label_array(examples: Sequence[Example]) -> np.ndarray:
    """Each example's label as its index in DIRECTIONS: [N]."""
    return np.asarray([DIRECTIONS.index(e.label) for e in examples])
