"""Per-symbol event-time state: ticks, news and news watermarks in; fired forecast triggers out.

A trigger at event time T (every cadence step, and each news item naming the symbol) becomes
*tick-complete* once the symbol's tick watermark (its newest tick time less `tick_lateness_ms`) is
past T, so every tick at or before T is in the window; ticks out of order within that lateness are
put in place, and older ones are dead-lettered as `late`.
It then fires when the news stream has also passed T (a news watermark above T), so the forecast
sees exactly the news at or before T however ticks and news interleave on arrival. Two bounds keep
it live: where no watermark has come for `news_idle_ms` of wall time (a feed that sends none, or
stopped) a trigger waits at most `news_grace_ms`, and never more than `allowed_lateness_s` of event
time behind the symbol's ticks. (A backlogged agent may read ticks for seconds before the news
that precedes them in event time, so a short wall-clock timeout must not override watermarks.) Features and news are read as
of T only (no look-ahead). Pure Python: the Faust agents are wiring over this.
"""
from __future__ import annotations

import heapq
import os
from collections import OrderedDict
from dataclasses import dataclass

from agents.config import AgentsConfig, NS_PER_S
from agents.features import Features, TickWindow
from agents.prompt import history_block, news_block, numeric_tail
from agents.signal import numeric_probs
from schemas import InferenceRequest, NewsItem, Probs, Tick, forecast_id
from schemas.fields import MAX_TS_NS
from schemas.units import NS_PER_MS

MAX_SEEN_NEWS = 10_000


class LateEventError(ValueError):
    """An event too far behind the symbol's ticks; the caller dead-letters it with reason `late`."""

    reason = "late"


@dataclass(frozen=True, slots=True)
class NewsGate:
    """How far the news stream of a partition has come: `mark_ns` (None before every news partition
    sent a watermark) and whether watermarks have gone quiet (`idle`), so the grace period applies."""

    mark_ns: int | None
    idle: bool


OPEN_GATE = NewsGate(MAX_TS_NS, False)


@dataclass(frozen=True, slots=True)
class Fired:
    id: str
    symbol: str
    ts_ns: int
    trigger: str
    news_id: str | None
    features: Features
    news: tuple[NewsItem, ...]
    ingest_wall_ns: int   # when the trigger became tick-complete: the start of its latency
    ret_since_news: float | None = None   # log return from the latest news item's time to T


class SymbolState:
    def __init__(self, symbol: str, cfg: AgentsConfig) -> None:
        self.symbol = symbol
        self.cfg = cfg
        self.lateness_ns = cfg.allowed_lateness_s * NS_PER_S
        self.window = TickWindow(keep_ns=cfg.long_window_s * NS_PER_S + self.lateness_ns)
        self.news: list[NewsItem] = []
        self.seen_news: OrderedDict[str, None] = OrderedDict()
        self.waiting: list[tuple[int, str]] = []                 # news triggers waiting for ticks past them
        self.held: list[tuple[int, str, str, int]] = []          # (T, trigger, news_id, ready_wall_ns)
        self.tick_lateness_ns = cfg.tick_lateness_ms * NS_PER_MS
        self.newest_tick_ns: int | None = None
        self.tick_wm_ns: int | None = None       # newest tick time less the tick lateness
        self.partition = 0
        self.prefixes: dict[tuple[str, ...], str] = {}   # news ids -> news block, built when news arrives
        self.warmed_ns: int | None = None                 # the cadence trigger whose warm-up went out

    def on_tick(self, tick: Tick, wall_ns: int, gate: NewsGate) -> list[Fired]:
        if self.tick_wm_ns is not None and tick.ts_ns < self.tick_wm_ns:
            raise LateEventError(f"{tick.symbol} tick at {tick.ts_ns} behind its watermark {self.tick_wm_ns}")
        self.window.add(tick)
        self.newest_tick_ns = max(tick.ts_ns, self.newest_tick_ns or tick.ts_ns)
        new_wm_ns = self.newest_tick_ns - self.tick_lateness_ns
        if self.tick_wm_ns is not None and new_wm_ns > self.tick_wm_ns:
            for t, trigger, news_id in self._due_cadence(new_wm_ns) + (self._due_news(new_wm_ns) if self.waiting else []):
                heapq.heappush(self.held, (t, trigger, news_id, wall_ns))
        self.tick_wm_ns = max(new_wm_ns, self.tick_wm_ns or new_wm_ns)
        if self.news:
            self._evict_news()
        return self.release(wall_ns, gate) if self.held else []

    def on_news(self, item: NewsItem, wall_ns: int, gate: NewsGate) -> list[Fired]:
        if item.id in self.seen_news:
            return []
        if self.tick_wm_ns is not None and self.tick_wm_ns - item.ts_ns > self.lateness_ns:
            raise LateEventError(f"news {item.id} at {item.ts_ns} is over {self.cfg.allowed_lateness_s} s "
                                 f"behind {self.symbol}'s ticks")
        self._remember(item)
        self.prefix(self._news_as_of(self.news[-1].ts_ns))
        if self.tick_wm_ns is not None and item.ts_ns < self.tick_wm_ns:
            heapq.heappush(self.held, (item.ts_ns, "news", item.id, wall_ns))
        else:
            heapq.heappush(self.waiting, (item.ts_ns, item.id))
        return self.release(wall_ns, gate)

    def release(self, wall_ns: int, gate: NewsGate) -> list[Fired]:
        """Fire, in event-time order, the held triggers the news stream (or a bound) lets go."""
        fired = []
        while self.held and self._may_fire(self.held[0], wall_ns, gate):
            t, trigger, news_id, ready_wall_ns = heapq.heappop(self.held)
            result = self._fire(t, trigger, news_id or None, ready_wall_ns)
            if result:
                fired.append(result)
        return fired

    def _may_fire(self, held: tuple[int, str, str, int], wall_ns: int, gate: NewsGate) -> bool:
        t, _, _, ready_wall_ns = held
        return ((gate.mark_ns is not None and gate.mark_ns > t)
                or (gate.idle and wall_ns - ready_wall_ns >= self.cfg.news_grace_ms * NS_PER_MS)
                or self.tick_wm_ns - t > self.lateness_ns)

    def _due_cadence(self, ts_ns: int) -> list[tuple[int, str, str]]:
        step = self.cfg.cadence_ns
        first = -(-self.tick_wm_ns // step) * step
        if first >= ts_ns:      # the common case: no cadence step passed
            return []
        return [(t, "cadence", "") for t in range(first, ts_ns, step)]

    def _due_news(self, ts_ns: int) -> list[tuple[int, str, str]]:
        due = []
        while self.waiting and self.waiting[0][0] < ts_ns:
            t, news_id = heapq.heappop(self.waiting)
            due.append((t, "news", news_id))
        return due

    def _fire(self, ts_ns: int, trigger: str, news_id: str | None, ready_wall_ns: int) -> Fired | None:
        cfg = self.cfg
        features = self.window.features_at(ts_ns, cfg.short_window_s * NS_PER_S, cfg.long_window_s * NS_PER_S)
        if features is None:
            return None
        news = self._news_as_of(ts_ns)
        moved = self.window.log_return(news[-1].ts_ns, ts_ns) if news else None
        return Fired(forecast_id(self.symbol, ts_ns, trigger, news_id), self.symbol, ts_ns, trigger, news_id,
                     features, news, ready_wall_ns, moved)

    def prefix(self, news: tuple[NewsItem, ...]) -> str:
        """The news block of a prompt, built once per news set (when the news arrives: predictive buffering)."""
        key = tuple(n.id for n in news)
        if key not in self.prefixes:
            if len(self.prefixes) >= 4:
                self.prefixes.pop(next(iter(self.prefixes)))
            self.prefixes[key] = news_block(self.symbol, news)
        return self.prefixes[key]

    def next_cadence_ns(self) -> int:
        """The next cadence trigger: the first step at or after the tick watermark (it fires past it)."""
        step = self.cfg.cadence_ns
        return -(-self.tick_wm_ns // step) * step

    def news_as_of(self, ts_ns: int, limit: int | None = None) -> tuple[NewsItem, ...]:
        return self._news_as_of(ts_ns, limit)

    def _news_as_of(self, ts_ns: int, limit: int | None = None) -> tuple[NewsItem, ...]:
        oldest = ts_ns - self.cfg.news_window_s * NS_PER_S
        usable = [n for n in self.news if oldest <= n.ts_ns <= ts_ns]
        return tuple(usable[-(limit or self.cfg.max_news_in_prompt):])

    def minute_returns(self, ts_ns: int, minutes: int) -> list[float | None]:
        """Log returns over each of the `minutes` minutes before `ts_ns`, oldest first."""
        ends = [ts_ns - k * 60 * NS_PER_S for k in range(minutes - 1, -1, -1)]
        return [self.window.log_return(end - 60 * NS_PER_S, end) for end in ends]

    def _remember(self, item: NewsItem) -> None:
        self.seen_news[item.id] = None
        if len(self.seen_news) > MAX_SEEN_NEWS:
            self.seen_news.popitem(last=False)
        self.news.append(item)
        self.news.sort(key=lambda n: (n.ts_ns, n.id))

    def _evict_news(self) -> None:
        oldest = self.tick_wm_ns - self.cfg.news_window_s * NS_PER_S - self.lateness_ns
        while self.news and self.news[0].ts_ns < oldest:
            self.news.pop(0)


class Processor:
    """All symbols' states of one agents worker, and the news watermarks of its partitions.

    `news_origins` is the partition count of `news`: each symbol partition's news watermark is the
    minimum over the watermarks forwarded from every `news` partition. With `gated=False` (events
    already in event-time order, as from a tape) triggers fire as soon as they are tick-complete.
    """

    def __init__(self, cfg: AgentsConfig, *, news_origins: int = 1, gated: bool = True) -> None:
        self.cfg = cfg
        self.news_origins = news_origins
        self.gated = gated
        self.states: dict[str, SymbolState] = {}
        self.watermarks: dict[tuple[int, int], int] = {}   # (partition, origin) -> ts_ns
        self.marks: dict[int, int] = {}                    # partition -> min over origins, once all sent one
        self.watermark_wall_ns: dict[int, int] = {}        # partition -> when its last watermark came
        self.started_wall_ns: int | None = None            # first event: watermarks may take a while to come
        self._last_gate: tuple[tuple[int, int] | None, NewsGate] = (None, OPEN_GATE)

    def state(self, symbol: str, partition: int) -> SymbolState:
        if symbol not in self.states:
            self.states[symbol] = SymbolState(symbol, self.cfg)
        state = self.states[symbol]
        state.partition = partition
        return state

    def gate(self, partition: int, wall_ns: int) -> NewsGate:
        if not self.gated:
            return OPEN_GATE
        if self._last_gate[0] == (partition, wall_ns):    # the ticks of one record share their gate
            return self._last_gate[1]
        if self.started_wall_ns is None:
            self.started_wall_ns = wall_ns
        last_wall_ns = self.watermark_wall_ns.get(partition, self.started_wall_ns)
        idle = wall_ns - last_wall_ns >= self.cfg.news_idle_ms * NS_PER_MS
        gate = NewsGate(self.marks.get(partition), idle)
        self._last_gate = ((partition, wall_ns), gate)
        return gate

    def on_tick(self, tick: Tick, wall_ns: int, partition: int = 0) -> list[Fired]:
        return self.state(tick.symbol, partition).on_tick(tick, wall_ns, self.gate(partition, wall_ns))

    def partitions_ahead(self, bound_ns: int, wall_ns: int) -> set[int]:
        """Partitions with a symbol whose ticks run more than `bound_ns` of event time ahead of its oldest
        trigger still waiting for news (`ahead`): their tick intake should pause until the news stream
        catches up (watermark alignment). Without it a backlog (a fast replay, a worker catching up) reads ticks far ahead of
        the news that precedes them, which then comes over `allowed_lateness_s` behind and is dropped as
        late. A partition whose news watermarks have gone quiet is never held back (its waiting triggers
        go by the grace period), so this cannot stall."""
        return {state.partition for symbol, state in self.states.items() if self.ahead(symbol, bound_ns, wall_ns)}

    def ahead(self, symbol: str, bound_ns: int, wall_ns: int) -> bool:
        """Whether `symbol`'s ticks run more than `bound_ns` ahead of its oldest trigger waiting for news
        (cheap: asked after each record, to stop reading its partition there)."""
        state = self.states.get(symbol)
        if not self.gated or state is None or not state.held or state.tick_wm_ns is None:
            return False
        return state.tick_wm_ns - state.held[0][0] > bound_ns and not self.gate(state.partition, wall_ns).idle

    def on_news(self, item: NewsItem, symbol: str, wall_ns: int, partition: int = 0) -> list[Fired]:
        return self.state(symbol, partition).on_news(item, wall_ns, self.gate(partition, wall_ns))

    def on_news_watermark(self, ts_ns: int, origin: int, wall_ns: int, partition: int = 0) -> list[Fired]:
        key = (partition, origin)
        self.watermarks[key] = max(ts_ns, self.watermarks.get(key, ts_ns))
        self.watermark_wall_ns[partition] = wall_ns
        self._last_gate = (None, OPEN_GATE)
        marks = [self.watermarks.get((partition, o)) for o in range(self.news_origins)]
        if None not in marks:
            self.marks[partition] = min(marks)
        gate = self.gate(partition, wall_ns)
        return [f for s in self.states.values() if s.partition == partition for f in s.release(wall_ns, gate)]

    def warmup(self, symbol: str, created_wall_ns: int, at_ns: int | None = None) -> InferenceRequest | None:
        """A request to prefill what is already known of `symbol`'s prompt at `at_ns` (default: its next
        cadence trigger): the news block and the clock line, so the trigger only computes the market part."""
        state = self.states.get(symbol)
        if not self.cfg.warmup or state is None or state.tick_wm_ns is None:
            return None
        at_ns = state.next_cadence_ns() if at_ns is None else at_ns
        head = self._known_head(state, at_ns)
        probs = Probs(1 / 3, 1 / 3, 1 / 3)
        return InferenceRequest(f"warmup-{forecast_id(symbol, at_ns, 'warmup', head[-64:])}", symbol, at_ns,
                                self.cfg.horizon_s, "news", head, probs, (), self.cfg.adapter_for(symbol),
                                created_wall_ns, created_wall_ns, created_wall_ns + self.cfg.deadline_ms * NS_PER_MS,
                                kind="warmup")

    def due_warmup(self, symbol: str, created_wall_ns: int) -> InferenceRequest | None:
        """The next cadence trigger's warm-up, once the symbol's ticks are `warmup_lead_s` from it (once each)."""
        state = self.states.get(symbol)
        if not self.cfg.warmup or state is None or state.tick_wm_ns is None:
            return None
        at_ns = state.next_cadence_ns()
        if state.warmed_ns == at_ns or state.tick_wm_ns < at_ns - self.cfg.warmup_lead_s * NS_PER_S:
            return None
        state.warmed_ns = at_ns
        return self.warmup(symbol, created_wall_ns, at_ns)

    def rewarm_after(self, fired: Fired, created_wall_ns: int) -> InferenceRequest | None:
        """After a news trigger's request: the symbol's coming cadence trigger, if already warmed, has a
        head without that news, so warm it again. Sent after the news trigger's own request, never
        before it (that held the engine just as the news trigger came); the news trigger's prompt
        caches the new news block, so this warm-up only adds the clock line."""
        state = self.states.get(fired.symbol)
        if fired.trigger != "news" or state is None or state.warmed_ns is None or state.tick_wm_ns is None:
            return None
        if not fired.ts_ns < state.warmed_ns == state.next_cadence_ns():   # its news is in that head
            return None
        return self.warmup(fired.symbol, created_wall_ns, state.warmed_ns)

    def _known_head(self, state: SymbolState, at_ns: int) -> str:
        """The part of the prompt of a trigger at `at_ns` that the market at `at_ns` cannot change: prompts
        built from unlike probe markets agree up to there. Cut back to the end of a line or to just before
        a space, where a word-level tokenizer splits too (the engine reuses the head to the token)."""
        news = state.news_as_of(at_ns)
        prompts = [self._prompt(Fired("", state.symbol, at_ns, "warmup", None, features, news, 0, ret), news)[1]
                   for features, ret in _PROBES]
        common = os.path.commonprefix(prompts)
        return common[:max(common.rfind("\n") + 1, common.rfind(" "), 0)]

    def release_all(self, wall_ns: int) -> list[Fired]:
        """For a timer: fire what the wall-clock grace now lets go."""
        return [f for s in self.states.values() for f in s.release(wall_ns, self.gate(s.partition, wall_ns))]

    def request(self, fired: Fired, created_wall_ns: int) -> InferenceRequest:
        cfg = self.cfg
        news, prompt = self._prompt(fired, fired.news)
        return InferenceRequest(
            id=fired.id, symbol=fired.symbol, ts_ns=fired.ts_ns, horizon_s=cfg.horizon_s, trigger=fired.trigger,
            prompt=prompt, numeric=numeric_probs(fired.features, cfg.horizon_s, cfg.flat_bps, cfg.momentum_coef),
            news_ids=tuple(n.id for n in news), adapter=cfg.adapter_for(fired.symbol),
            ingest_wall_ns=fired.ingest_wall_ns, created_wall_ns=created_wall_ns,
            deadline_wall_ns=fired.ingest_wall_ns + cfg.deadline_ms * NS_PER_MS,
            features=_features(fired, dropped=len(fired.news) - len(news)),
            new_news=sum(n.ts_ns > fired.ts_ns - cfg.cadence_ns for n in news), prompt_deep=self.deep_prompt(fired))

    def deep_prompt(self, fired: Fired) -> str | None:
        """The deep tier's prompt: up to `deep_max_news` news and the last `deep_history_min` minutes of price
        before the base prompt's market lines (None for a symbol this processor holds no state of)."""
        state = self.states.get(fired.symbol)
        if state is None:
            return None
        news = state.news_as_of(fired.ts_ns, self.cfg.deep_max_news)
        history = history_block(state.minute_returns(fired.ts_ns, self.cfg.deep_history_min))
        return news_block(fired.symbol, news) + history + numeric_tail(
            fired.ts_ns, fired.features, news, self.cfg.news_half_life_s, self.cfg.horizon_s, fired.ret_since_news)

    def _prompt(self, fired: Fired, news: tuple[NewsItem, ...]) -> tuple[tuple[NewsItem, ...], str]:
        """The prompt, and the news in it: over `max_prompt_chars`, the oldest news goes first."""
        state = self.states.get(fired.symbol)
        while True:
            prefix = state.prefix(news) if state else news_block(fired.symbol, news)
            prompt = prefix + numeric_tail(fired.ts_ns, fired.features, news, self.cfg.news_half_life_s,
                                           self.cfg.horizon_s, fired.ret_since_news)
            if len(prompt) <= self.cfg.max_prompt_chars or not news:
                return news, prompt
            news = news[1:]


_PROBES = ((Features(101.0, 0.0123, -0.0456, 2e-4, 11.0, 3, 1.5), 0.05),       # every market-dependent word
           (Features(57.0, -0.0789, 0.0321, 7e-4, 29.0, 8, None), -0.05),      # differs in some pair of them
           (Features(9.0, 0.0, 0.0, 1e-3, 0.0, 0, 0.25), 0.0))


def _features(fired: Fired, dropped: int = 0) -> dict[str, float]:
    features = fired.features.as_dict()
    if dropped:
        features["news_dropped"] = float(dropped)
    if fired.ret_since_news is not None:
        features["ret_since_news"] = fired.ret_since_news
    return features
