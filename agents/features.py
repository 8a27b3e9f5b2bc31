"""Rolling event-time windows of one symbol's ticks and the features read from them.

Pure Python: no Faust, no Kafka. Features at time T only ever read ticks with ts_ns <= T.
"""
from __future__ import annotations

import math
from bisect import bisect_right
from collections import deque
from dataclasses import dataclass

from schemas import Quote, Tick, Trade

NS_PER_S = 1_000_000_000
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


class TickWindow:
    """Trades (ts_ns, price, size) and quotes kept for `keep_ns` of event time behind the newest tick."""

    def __init__(self, keep_ns: int) -> None:
        self.keep_ns = keep_ns
        self.trades: deque[tuple[int, float, float]] = deque()
        self.quotes: deque[tuple[int, float, float]] = deque()
        self.first_trade_ns: int | None = None

    def add(self, tick: Tick) -> None:
        """Ticks may come slightly out of order (within the allowed lateness): they are put in place."""
        if isinstance(tick, Trade):
            _insert(self.trades, (tick.ts_ns, tick.price, tick.size))
            if self.first_trade_ns is None or tick.ts_ns < self.first_trade_ns:
                self.first_trade_ns = tick.ts_ns
        elif isinstance(tick, Quote):
            _insert(self.quotes, (tick.ts_ns, tick.bid_px, tick.ask_px))
        newest = max(self.trades[-1][0] if self.trades else tick.ts_ns, self.quotes[-1][0] if self.quotes else 0)
        self._evict(newest - self.keep_ns)

    def _evict(self, horizon_ns: int) -> None:
        # Keep one trade older than the horizon: it is the price at the window start.
        while len(self.trades) > 1 and self.trades[1][0] <= horizon_ns:
            self.trades.popleft()
        while len(self.quotes) > 1 and self.quotes[1][0] <= horizon_ns:
            self.quotes.popleft()

    def has_trade_at(self, ts_ns: int) -> bool:
        return self.first_trade_ns is not None and self.first_trade_ns <= ts_ns

    def features_at(self, ts_ns: int, short_ns: int, long_ns: int) -> Features | None:
        """Features as of `ts_ns` from ticks at or before it; None without any trade by then."""
        trades = [t for t in self.trades if t[0] <= ts_ns]
        if not trades:
            return None
        times = [t[0] for t in trades]
        last = trades[-1][1]
        recent = trades[bisect_right(times, ts_ns - short_ns):]
        return Features(
            last_price=last,
            ret_short=math.log(last / _price_at(trades, times, ts_ns - short_ns)),
            ret_long=math.log(last / _price_at(trades, times, ts_ns - long_ns)),
            vol_per_sqrt_s=self._realised_vol(ts_ns, long_ns, trades[bisect_right(times, ts_ns - long_ns):]),
            volume_short=sum(t[2] for t in recent),
            trades_short=len(recent),
            spread_bps=self._spread_bps(ts_ns),
        )

    def log_return(self, from_ns: int, to_ns: int) -> float | None:
        """Log return between the last trades at or before each time; None without a trade by `from_ns`."""
        times = [t[0] for t in self.trades]
        start, end = bisect_right(times, from_ns), bisect_right(times, to_ns)
        if start == 0 or end == 0:
            return None
        return math.log(self.trades[end - 1][1] / self.trades[start - 1][1])

    def _realised_vol(self, ts_ns: int, span_ns: int, trades: list[tuple[int, float, float]]) -> float:
        """From quote mids when there are quotes (trade prices bounce between bid and ask, which
        inflates their volatility several times at this horizon), else from trades."""
        mids = [(q[0], 0.5 * (q[1] + q[2]), 0.0) for q in self.quotes if ts_ns - span_ns < q[0] <= ts_ns]
        return _realised_vol(mids if len(mids) >= 3 else trades, span_ns)

    def _spread_bps(self, ts_ns: int) -> float | None:
        quote = next((q for q in reversed(self.quotes) if q[0] <= ts_ns), None)
        if quote is None:
            return None
        _, bid, ask = quote
        return (ask - bid) / (0.5 * (ask + bid)) * 1e4


def _insert(rows: deque[tuple[int, float, float]], row: tuple[int, float, float]) -> None:
    """Append, or insert after every row at or before its time (a stable, in-order insert)."""
    if not rows or rows[-1][0] <= row[0]:
        rows.append(row)
        return
    rows.insert(bisect_right([r[0] for r in rows], row[0]), row)


def _price_at(trades: list[tuple[int, float, float]], times: list[int], ts_ns: int) -> float:
    """Last trade price at or before ts_ns; the earliest known price when the window reaches past it."""
    i = bisect_right(times, ts_ns)
    return trades[max(i - 1, 0)][1]


def _realised_vol(trades: list[tuple[int, float, float]], span_ns: int) -> float:
    if len(trades) < 3:
        return MIN_VOL_PER_SQRT_S
    sq = sum(math.log(b[1] / a[1]) ** 2 for a, b in zip(trades, trades[1:]))
    span_s = max((trades[-1][0] - trades[0][0]) / NS_PER_S, 1.0)
    return max(math.sqrt(sq / span_s), MIN_VOL_PER_SQRT_S)
