"""Per-symbol event-time state: ticks and news in, fired forecast triggers out.

A trigger at event time T (every cadence step, and each news item naming the symbol) fires once
a tick later than T has arrived, so every tick at or before T is in the window; features and news
are read as of T only (no look-ahead). Pure Python: the Faust agents are wiring over this.
"""
from __future__ import annotations

import heapq
from collections import OrderedDict
from dataclasses import dataclass

from agents.config import AgentsConfig, NS_PER_S
from agents.features import Features, TickWindow
from agents.prompt import build_prompt
from agents.signal import numeric_probs
from schemas import InferenceRequest, NewsItem, Tick, forecast_id

MAX_SEEN_NEWS = 10_000


class LateEventError(ValueError):
    """A tick older than the symbol's watermark; the caller dead-letters it with reason `late`."""

    reason = "late"


@dataclass(frozen=True, slots=True)
class Fired:
    id: str
    symbol: str
    ts_ns: int
    trigger: str
    news_id: str | None
    features: Features
    news: tuple[NewsItem, ...]
    ingest_wall_ns: int


class SymbolState:
    def __init__(self, symbol: str, cfg: AgentsConfig) -> None:
        self.symbol = symbol
        self.cfg = cfg
        self.window = TickWindow(keep_ns=cfg.long_window_s * NS_PER_S)
        self.news: list[NewsItem] = []
        self.seen_news: OrderedDict[str, None] = OrderedDict()
        self.pending: list[tuple[int, str]] = []  # heap of (ts_ns, news_id) news triggers
        self.watermark_ns: int | None = None

    def on_tick(self, tick: Tick, wall_ns: int) -> list[Fired]:
        if self.watermark_ns is not None and tick.ts_ns < self.watermark_ns:
            raise LateEventError(f"{tick.symbol} tick at {tick.ts_ns} behind watermark {self.watermark_ns}")
        due = self._due_cadence(tick.ts_ns) + self._due_news(tick.ts_ns)
        fired = [f for f in (self._fire(t, kind, nid, wall_ns) for t, kind, nid in sorted(due)) if f]
        self.window.add(tick)
        self.watermark_ns = tick.ts_ns
        self._evict_news()
        return fired

    def on_news(self, item: NewsItem, wall_ns: int) -> list[Fired]:
        if item.id in self.seen_news:
            return []
        self.seen_news[item.id] = None
        if len(self.seen_news) > MAX_SEEN_NEWS:
            self.seen_news.popitem(last=False)
        self._insert_news(item)
        if self.watermark_ns is not None and item.ts_ns < self.watermark_ns:
            fired = self._fire(item.ts_ns, "news", item.id, wall_ns)
            return [fired] if fired else []
        heapq.heappush(self.pending, (item.ts_ns, item.id))
        return []

    def _due_cadence(self, ts_ns: int) -> list[tuple[int, str, str | None]]:
        if self.watermark_ns is None:
            return []
        step = self.cfg.cadence_ns
        first = -(-self.watermark_ns // step) * step
        return [(t, "cadence", None) for t in range(first, ts_ns, step)]

    def _due_news(self, ts_ns: int) -> list[tuple[int, str, str | None]]:
        due = []
        while self.pending and self.pending[0][0] < ts_ns:
            t, news_id = heapq.heappop(self.pending)
            due.append((t, "news", news_id))
        return due

    def _fire(self, ts_ns: int, trigger: str, news_id: str | None, wall_ns: int) -> Fired | None:
        cfg = self.cfg
        features = self.window.features_at(ts_ns, cfg.short_window_s * NS_PER_S, cfg.long_window_s * NS_PER_S)
        if features is None:
            return None
        return Fired(forecast_id(self.symbol, ts_ns, trigger, news_id), self.symbol, ts_ns, trigger, news_id,
                     features, self._news_as_of(ts_ns), wall_ns)

    def _news_as_of(self, ts_ns: int) -> tuple[NewsItem, ...]:
        oldest = ts_ns - self.cfg.news_window_s * NS_PER_S
        usable = [n for n in self.news if oldest <= n.ts_ns <= ts_ns]
        return tuple(usable[-self.cfg.max_news_in_prompt:])

    def _insert_news(self, item: NewsItem) -> None:
        self.news.append(item)
        self.news.sort(key=lambda n: (n.ts_ns, n.id))

    def _evict_news(self) -> None:
        oldest = self.watermark_ns - 2 * self.cfg.news_window_s * NS_PER_S
        while self.news and self.news[0].ts_ns < oldest:
            self.news.pop(0)


class Processor:
    """All symbols' states; one per agents worker (each owns the symbols of its partitions)."""

    def __init__(self, cfg: AgentsConfig) -> None:
        self.cfg = cfg
        self.states: dict[str, SymbolState] = {}

    def state(self, symbol: str) -> SymbolState:
        if symbol not in self.states:
            self.states[symbol] = SymbolState(symbol, self.cfg)
        return self.states[symbol]

    def on_tick(self, tick: Tick, wall_ns: int) -> list[Fired]:
        return self.state(tick.symbol).on_tick(tick, wall_ns)

    def on_news(self, item: NewsItem, symbol: str, wall_ns: int) -> list[Fired]:
        return self.state(symbol).on_news(item, wall_ns)

    def request(self, fired: Fired, created_wall_ns: int) -> InferenceRequest:
        cfg = self.cfg
        prompt = build_prompt(fired.symbol, fired.ts_ns, fired.features, fired.news, cfg.news_half_life_s,
                              cfg.horizon_s)
        return InferenceRequest(
            id=fired.id, symbol=fired.symbol, ts_ns=fired.ts_ns, horizon_s=cfg.horizon_s, trigger=fired.trigger,
            prompt=prompt, numeric=numeric_probs(fired.features, cfg.horizon_s, cfg.flat_bps, cfg.momentum_coef),
            news_ids=tuple(n.id for n in fired.news), adapter=cfg.adapter_for(fired.symbol),
            ingest_wall_ns=fired.ingest_wall_ns, created_wall_ns=created_wall_ns,
            deadline_wall_ns=fired.ingest_wall_ns + cfg.deadline_ms * 1_000_000, features=fired.features.as_dict())
