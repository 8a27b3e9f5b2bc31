"""Records that pass the schema but carry extreme values never make the agents emit a request the
inference worker would reject, and never make a symbol's state explode.

Pure: the agents' processor and the app's event guard, no Kafka.
"""
from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agents.app import EventGuard
from agents.config import AgentsConfig
from agents.processor import Processor
from schemas import NewsItem, Quote, SchemaError, Trade, decode_request, encode
from schemas.fields import MAX_PRICE, MAX_SIZE, MAX_TS_NS, MIN_PRICE, MIN_TS_NS

pytestmark = pytest.mark.reliability
S = 1_000_000_000
T0 = 1_767_623_400 * S
CFG = AgentsConfig()

prices = st.floats(min_value=MIN_PRICE, max_value=MAX_PRICE)          # the whole range the schema accepts
sizes = st.floats(min_value=0, max_value=MAX_SIZE)
steps_s = st.floats(min_value=0, max_value=400, allow_nan=False)


@st.composite
def tick_stream(draw):
    """A symbol's ticks in time order with extreme prices and sizes, and some news."""
    ts_ns, events = T0, []
    for i in range(draw(st.integers(min_value=2, max_value=25))):
        ts_ns += int(draw(steps_s) * S)
        if draw(st.integers(0, 5)) == 0:
            events.append(NewsItem(f"n{i}", ts_ns, "wire", draw(st.text(min_size=1, max_size=300)).strip() or "x",
                                   ("ACME",)))
        elif draw(st.booleans()):
            bid = draw(prices)
            ask = min(bid * (1 + draw(st.floats(0, 10))), MAX_PRICE)
            events.append(Quote("ACME", ts_ns, bid, draw(sizes), ask, draw(sizes)))
        else:
            events.append(Trade("ACME", ts_ns, draw(prices), draw(sizes)))
    return events


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=tick_stream())
def test_every_request_the_agents_build_passes_the_inference_decoder(events):
    processor = Processor(CFG, gated=False)
    fired = []
    for event in events:
        if isinstance(event, NewsItem):
            fired += processor.on_news(event, "ACME", 0)
        else:
            fired += processor.on_tick(event, 0)
    for trigger in fired:
        request = processor.request(trigger, time.time_ns())
        assert decode_request(encode(request)) == request


def test_prices_at_the_schema_limits_give_finite_features():
    """Regression: 1e-300 then 1e300 made the volatility inf, the request undecodable, the forecast lost."""
    processor = Processor(CFG, gated=False)
    fired = []
    for i, price in enumerate((10.0, MIN_PRICE, MAX_PRICE, MIN_PRICE, 5.0)):
        fired += processor.on_tick(Trade("ACME", T0 + i * 40 * S, price, MAX_SIZE), 0)
    assert fired
    for trigger in fired:
        request = processor.request(trigger, time.time_ns())
        assert decode_request(encode(request)) == request


def test_a_tick_far_ahead_of_the_wall_clock_is_rejected():
    guard = EventGuard()
    wall_ns = T0
    guard.check_time(T0 + 3600 * S, wall_ns)       # an hour ahead: clocks and feeds differ, accepted
    with pytest.raises(SchemaError) as caught:
        guard.check_time(T0 + 3 * 86_400 * S, wall_ns)
    assert caught.value.reason == "ts_in_future"


def test_a_jump_of_years_starts_a_new_session_instead_of_firing_every_minute_in_between():
    processor, guard = Processor(CFG), EventGuard()
    old = Trade("ACME", MIN_TS_NS + S, 10.0, 1.0)       # valid by the schema, years before the feed
    fired = guard.on_tick(processor, old, wall_ns=T0, partition=0)
    started = time.perf_counter()
    for i in range(3):
        fired += guard.on_tick(processor, Trade("ACME", T0 + i * 30 * S, 10.0 + i, 1.0), wall_ns=T0, partition=0)
    assert time.perf_counter() - started < 1.0
    assert guard.sessions_reset == 1
    assert len(processor.states["ACME"].held) <= 1 and len(fired) <= 1


def test_timestamps_at_the_schema_limits_do_not_break_the_guard():
    processor, guard = Processor(CFG), EventGuard()
    guard.on_tick(processor, Trade("ACME", MIN_TS_NS, 1.0, 1.0), wall_ns=MAX_TS_NS - 1, partition=0)
    guard.on_tick(processor, Trade("ACME", MAX_TS_NS - 1, 1.0, 1.0), wall_ns=MAX_TS_NS - 1, partition=0)
    assert guard.sessions_reset == 1
