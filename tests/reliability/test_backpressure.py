"""Backpressure: a worker slower than its triggers sheds the excess as expired numeric-only forecasts.

Proves (bench/backpressure.py on the session broker, model slowed to 40 ms a request): every request
is answered, the backlog stays bounded by about rate x deadline, `forecasts` never pauses for long,
and the worker spends model time only on requests that can still make their deadline.
"""
from __future__ import annotations

import pytest

from bench.backpressure import run
from inference.worker import DeadlineGate
from schemas import InferenceRequest, Probs

pytestmark = pytest.mark.reliability
RATE, SECONDS, COST_MS, DEADLINE_MS = 30.0, 6.0, 40.0, 1500


def request(i: int, deadline_ns: int) -> InferenceRequest:
    return InferenceRequest(f"r{i}", "ACME", 10**18, 60, "cadence", "p", Probs(0.3, 0.3, 0.4), (), None, 0, 0,
                            deadline_ns)


def test_the_gate_keeps_what_fits_before_its_deadline_earliest_first():
    gate = DeadlineGate()
    gate.observe(4, 400.0)                                     # 100 ms a request
    now = 10**18
    requests = [request(0, now + 450 * 10**6), request(1, now + 50 * 10**6), request(2, now + 150 * 10**6),
                request(3, now + 10**9)]
    live, late = gate.split(requests, now)
    assert [r.id for r in live] == ["r2", "r0", "r3"] and [r.id for r in late] == ["r1"]


def test_the_first_batch_is_never_shed_before_a_cost_is_known():
    live, late = DeadlineGate().split([request(0, 10**18 + 1)], 10**18)
    assert len(live) == 1 and not late


@pytest.mark.integration
def test_a_slow_worker_sheds_load_and_keeps_forecasts_flowing(kafka_bootstrap):
    figures = run(RATE, SECONDS, COST_MS, DEADLINE_MS, bootstrap=kafka_bootstrap)
    print(f"\nbackpressure ({RATE:.0f} requests/s, {COST_MS:.0f} ms a request, deadline {DEADLINE_MS} ms): "
          f"{figures.line()}")
    assert figures.forecasts == figures.requests
    assert 0 < figures.expired < figures.forecasts
    assert figures.max_backlog <= RATE * (DEADLINE_MS / 1e3 + 2.0)
    assert figures.max_pause_s < 2.0 and figures.drain_s < 5.0
