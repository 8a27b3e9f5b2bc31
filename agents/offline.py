"""Run the agents' logic over a tape without Kafka: the triggers (and requests) a replay must yield.

The set of fired trigger ids does not depend on how ticks and news interleave on arrival (a trigger
fires once a later tick arrives), so this is the ground truth for a live replay's forecast ids.
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Iterable, Iterator

from agents.config import AgentsConfig
from agents.news_policy import NewsPolicy
from agents.processor import Fired, Processor
from agents.sanitise import LocalNewsScreen, NewsRejected
from schemas import NewsItem, tick_from_obj


def fired_triggers(events: Iterable[tuple[str, dict[str, Any]]], cfg: AgentsConfig,
                   news_policy: NewsPolicy | None = None, processor: Processor | None = None) -> Iterator[Fired]:
    """`events` as a tape yields them: ("tick", row) / ("news", row) in event-time order. News goes
    through the agents' news screen first (`news_policy`, default from the environment). Pass the
    `processor` (ungated) to build each trigger's request from it as it fires, as the agents do: the deep
    prompt reads the symbol's state (its price history) at that moment."""
    processor = processor or Processor(cfg, gated=False)
    news_screen = LocalNewsScreen(news_policy or NewsPolicy.from_env())
    for kind, row in events:
        if kind == "tick":
            yield from processor.on_tick(tick_from_obj(row), 0)
        else:
            try:
                item = news_screen.admit(NewsItem.from_obj(row))
            except NewsRejected:
                continue
            for symbol in item.symbols:
                yield from processor.on_news(item, symbol, 0)


def rejected_news(events: Iterable[tuple[str, dict[str, Any]]], news_policy: NewsPolicy | None = None) -> Counter:
    """Reason -> count of the news in `events` the agents' screen rejects (and dead-letters) on a replay."""
    news_screen, reasons = LocalNewsScreen(news_policy or NewsPolicy.from_env()), Counter()
    for kind, row in events:
        if kind == "news":
            try:
                news_screen.admit(NewsItem.from_obj(row))
            except NewsRejected as rejected:
                reasons[rejected.reason] += 1
    return reasons
