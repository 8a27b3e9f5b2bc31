"""TickWindow's bisected features equal a plain scan of every tick kept, exactly (same floats)."""
import math
import random

import pytest

from agents.features import MIN_VOL_PER_SQRT_S, NS_PER_S, Features, TickWindow
from schemas import Quote, Trade

S = NS_PER_S
T0 = 1_700_000_000 * S
SHORT, LONG = 60 * S, 300 * S


class ScanWindow:
    """The reference: every tick kept in a list, features computed by scanning it."""

    def __init__(self, keep_ns: int) -> None:
        self.keep_ns, self.trades, self.quotes = keep_ns, [], []

    def add(self, tick) -> None:
        rows, row = (self.trades, (tick.ts_ns, tick.price, tick.size)) if isinstance(tick, Trade) else \
            (self.quotes, (tick.ts_ns, tick.bid_px, tick.ask_px))
        rows.insert(sum(1 for r in rows if r[0] <= row[0]), row)
        newest = max([r[0] for r in self.trades + self.quotes])
        for rows in (self.trades, self.quotes):
            while len(rows) > 1 and rows[1][0] <= newest - self.keep_ns:
                rows.pop(0)

    def features_at(self, ts_ns: int) -> Features | None:
        trades = [t for t in self.trades if t[0] <= ts_ns]
        if not trades:
            return None
        last = trades[-1][1]

        def price_at(t: int) -> float:
            before = [r for r in trades if r[0] <= t]
            return before[-1][1] if before else trades[0][1]

        recent = [t for t in trades if t[0] > ts_ns - SHORT]
        mids = [(q[0], 0.5 * (q[1] + q[2])) for q in self.quotes if ts_ns - LONG < q[0] <= ts_ns]
        rows = mids if len(mids) >= 3 else [(t[0], t[1]) for t in trades if t[0] > ts_ns - LONG]
        quote = [q for q in self.quotes if q[0] <= ts_ns]
        return Features(last, math.log(last / price_at(ts_ns - SHORT)), math.log(last / price_at(ts_ns - LONG)),
                        vol(rows), sum(t[2] for t in recent), len(recent),
                        (quote[-1][2] - quote[-1][1]) / (0.5 * (quote[-1][2] + quote[-1][1])) * 1e4 if quote else None)


def vol(rows: list[tuple[int, float]]) -> float:
    if len(rows) < 3:
        return MIN_VOL_PER_SQRT_S
    sq = sum(math.log(b[1] / a[1]) ** 2 for a, b in zip(rows, rows[1:]))
    return max(math.sqrt(sq / max((rows[-1][0] - rows[0][0]) / S, 1.0)), MIN_VOL_PER_SQRT_S)


def ticks(rng: random.Random, n: int, disorder_s: float) -> list:
    out, mid = [], 100.0
    for i in range(n):
        ts = T0 + int((i * 0.7 + rng.uniform(-disorder_s, 0)) * S)
        mid *= math.exp(rng.gauss(0, 0.001))
        if rng.random() < 0.6:
            out.append(Trade("ACME", ts, round(mid + rng.choice((-0.01, 0.01)), 2), float(rng.randint(1, 500))))
        else:
            out.append(Quote("ACME", ts, round(mid - 0.01, 2), 1.0, round(mid + 0.01, 2), 1.0))
    return out


@pytest.mark.parametrize("seed,disorder_s,keep_s", [(1, 0.0, 400), (2, 5.0, 400), (3, 30.0, 2100), (4, 2.0, 90)])
def test_bisected_features_equal_a_full_scan(seed, disorder_s, keep_s):
    rng = random.Random(seed)
    window, reference = TickWindow(keep_ns=keep_s * S), ScanWindow(keep_s * S)
    for i, tick in enumerate(ticks(rng, 2500, disorder_s)):
        window.add(tick)
        reference.add(tick)
        if i % 37 == 0:
            at = tick.ts_ns - int(rng.uniform(0, 20) * S)
            assert window.features_at(at, SHORT, LONG) == reference.features_at(at)
            frm = at - int(rng.uniform(0, 200) * S)
            expect = [t for t in reference.trades if t[0] <= frm], [t for t in reference.trades if t[0] <= at]
            assert window.log_return(frm, at) == (math.log(expect[1][-1][1] / expect[0][-1][1]) if expect[0] else None)
    assert len(window.trades) == len(reference.trades) and len(window.quotes) == len(reference.quotes)


def test_no_features_before_the_first_trade():
    window = TickWindow(keep_ns=300 * S)
    window.add(Quote("ACME", T0, 99.0, 1.0, 99.1, 1.0))
    assert window.features_at(T0 + S, SHORT, LONG) is None
    window.add(Trade("ACME", T0 + 2 * S, 99.05, 10.0))
    assert window.features_at(T0 + S, SHORT, LONG) is None
    assert window.features_at(T0 + 2 * S, SHORT, LONG).last_price == 99.05
