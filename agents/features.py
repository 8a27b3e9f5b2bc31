"""Rolling event-time windows of one symbol's ticks and the features read from them.

Pure Python: no Faust, no Kafka. Features at time T only ever read ticks with ts_ns <= T.
"""
from __future__ import annotations

import math
from bisect import bisect_right
from dataclasses import dataclass

from schemas import Quote, Tick, Trade
from schemas.units import NS_PER_S

MIN_VOL_PER_SQRT_S = 1e-5


@dataclass(frozen=True, slots=True)
class Features:
    last_price: float
    ret_short: float          # log return over the short window
    ret_long: float           # log return over the long window
    vol_per_sqrt_s: float     # realised volatility of trade log returns, per sqrt(second)
    volume_short: float
    trades_short: int
    spread_bps: float | None  # last quote's spread, if any quote was seen

    def as_dict(self) -> dict[str, float]:
        out = {"last_price": self.last_price, "ret_short": self.ret_short, "ret_long": self.ret_long,
               "vol_per_sqrt_s": self.vol_per_sqrt_s, "volume_short": self.volume_short,
               "trades_short": float(self.trades_short)}
        if self.spread_bps is not None:
            out["spread_bps"] = self.spread_bps
        return out


class _Series:
    """Rows (ts_ns, a, b) in event-time order as three columns (trades: price, size; quotes: bid, ask),
    the oldest kept at `start`: times are bisected and ranges summed without copying the window, and
    eviction only moves `start` (the lists are compacted once half of them is behind it)."""

    __slots__ = ("ts", "a", "b", "start")

    def __init__(self) -> None:
        self.ts: list[int] = []
        self.a: list[float] = []
        self.b: list[float] = []
        self.start = 0

    def __len__(self) -> int:
        return len(self.ts) - self.start

    def add(self, ts_ns: int, a: float, b: float) -> None:
        """Append, or insert after every row at or before its time (a stable, in-order insert)."""
        i = len(self.ts) if not self.ts or self.ts[-1] <= ts_ns else bisect_right(self.ts, ts_ns, self.start)
        self.ts.insert(i, ts_ns)
        self.a.insert(i, a)
        self.b.insert(i, b)

    def upto(self, ts_ns: int, lo: int | None = None) -> int:
        """Index just past the last row at or before `ts_ns` (searching from `lo`, default the oldest)."""
        return bisect_right(self.ts, ts_ns, self.start if lo is None else lo)

    def evict(self, horizon_ns: int) -> None:
        """Drop rows at or before the horizon except the newest of them (the value at the window start)."""
        if len(self.ts) - self.start < 2 or self.ts[self.start + 1] > horizon_ns:
            return                                   # the common case: nothing to drop
        keep_from = max(bisect_right(self.ts, horizon_ns, self.start) - 1, self.start)
        self.start = keep_from
        if self.start > 1024 and self.start * 2 > len(self.ts):
            for column in (self.ts, self.a, self.b):
                del column[:self.start]
            self.start = 0


class TickWindow:
    """Trades (ts_ns, price, size) and quotes (ts_ns, bid, ask) kept for `keep_ns` of event time behind
    the newest tick. Features read them through bisection: a trigger costs O(log n) plus its ranges."""

    def __init__(self, keep_ns: int) -> None:
        self.keep_ns = keep_ns
        self.trades = _Series()
        self.quotes = _Series()

    def add(self, tick: Tick) -> None:
        """Ticks may come slightly out of order (within the allowed lateness): they are put in place."""
        if isinstance(tick, Trade):
            self.trades.add(tick.ts_ns, tick.price, tick.size)
        elif isinstance(tick, Quote):
            self.quotes.add(tick.ts_ns, tick.bid_px, tick.ask_px)
        trades, quotes = self.trades, self.quotes
        horizon_ns = max(trades.ts[-1] if trades.ts else tick.ts_ns, quotes.ts[-1] if quotes.ts else 0) - self.keep_ns
        trades.evict(horizon_ns)
        quotes.evict(horizon_ns)

    def features_at(self, ts_ns: int, short_ns: int, long_ns: int) -> Features | None:
        """Features as of `ts_ns` from ticks at or before it; None without any trade by then."""
        trades = self.trades
        end = trades.upto(ts_ns)
        if end == trades.start:
            return None
        last = trades.a[end - 1]
        short_from, long_from = trades.upto(ts_ns - short_ns), trades.upto(ts_ns - long_ns)
        return Features(
            last_price=last,
            ret_short=math.log(last / trades.a[max(short_from - 1, trades.start)]),
            ret_long=math.log(last / trades.a[max(long_from - 1, trades.start)]),
            vol_per_sqrt_s=self._realised_vol(ts_ns, long_ns, long_from, end),
            volume_short=sum(trades.b[short_from:end]),
            trades_short=end - short_from,
            spread_bps=self._spread_bps(ts_ns),
        )

    def log_return(self, from_ns: int, to_ns: int) -> float | None:
        """Log return between the last trades at or before each time; None without a trade by `from_ns`."""
        trades = self.trades
        start, end = trades.upto(from_ns), trades.upto(to_ns)
        if start == trades.start or end == trades.start:
            return None
        return math.log(trades.a[end - 1] / trades.a[start - 1])

    def _realised_vol(self, ts_ns: int, span_ns: int, trades_from: int, trades_end: int) -> float:
        """From quote mids when there are quotes (trade prices bounce between bid and ask, which
        inflates their volatility several times at this horizon), else from trades."""
        quotes = self.quotes
        q_from, q_end = quotes.upto(ts_ns - span_ns), quotes.upto(ts_ns)
        if q_end - q_from >= 3:
            mids = [0.5 * (bid + ask) for bid, ask in zip(quotes.a[q_from:q_end], quotes.b[q_from:q_end])]
            return _realised_vol(quotes.ts[q_from:q_end], mids, span_ns)
        trades = self.trades
        return _realised_vol(trades.ts[trades_from:trades_end], trades.a[trades_from:trades_end], span_ns)

    def _spread_bps(self, ts_ns: int) -> float | None:
        quotes = self.quotes
        i = quotes.upto(ts_ns)
        if i == quotes.start:
            return None
        bid, ask = quotes.a[i - 1], quotes.b[i - 1]
        return (ask - bid) / (0.5 * (ask + bid)) * 1e4


def _realised_vol(times: list[int], prices: list[float], span_ns: int) -> float:
    if len(prices) < 3:
        return MIN_VOL_PER_SQRT_S
    sq = sum(math.log(b / a) ** 2 for a, b in zip(prices, prices[1:]))
    span_s = max((times[-1] - times[0]) / NS_PER_S, 1.0)
    return max(math.sqrt(sq / span_s), MIN_VOL_PER_SQRT_S)
