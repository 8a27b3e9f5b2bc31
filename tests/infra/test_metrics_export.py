"""Metric groups, the /metrics endpoint, and what the inference worker exports after a batch."""
from __future__ import annotations

import urllib.request

import pytest

from agents.metrics import AgentsMetrics
from inference.metrics import InferenceMetrics
from streams.metrics import ReplayMetrics, exported_names, serve_metrics
from streams.ports import free_port


def scrape(port: int) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()


def sample(text: str, line_start: str) -> float:
    return float(next(line for line in text.splitlines() if line.startswith(line_start)).rsplit(" ", 1)[1])


def test_exported_names_spell_counters_and_histograms_as_scraped(metric_groups) -> None:
    names = exported_names(metric_groups)
    assert {"finllm_replay_events_sent_total", "finllm_replay_lag_seconds", "finllm_agents_events_in_total",
            "finllm_deadletters_total", "finllm_consumer_lag_messages", "finllm_consumer_lag_seconds",
            "finllm_tick_to_forecast_seconds_bucket", "finllm_inference_latency_seconds_count",
            "finllm_engine_kv_blocks_used", "finllm_engine_ttft_seconds"} <= names
    assert "finllm_replay_events_sent" not in names


def test_serve_on_a_free_port_when_unset_and_on_the_given_one_otherwise() -> None:
    metrics = ReplayMetrics()
    metrics.events_sent.labels("tick").inc(3)
    endpoint = serve_metrics(metrics, env={})
    try:
        assert endpoint.port > 0 and endpoint.host == "127.0.0.1"
        assert sample(scrape(endpoint.port), 'finllm_replay_events_sent_total{kind="tick"}') == 3
    finally:
        endpoint.close()
    port = free_port()
    endpoint = serve_metrics(AgentsMetrics(), env={"FINLLM_METRICS_PORT": str(port)})
    try:
        assert endpoint.port == port and "finllm_agents_held_triggers 0.0" in scrape(port)
    finally:
        endpoint.close()


def test_two_processes_worth_of_metrics_do_not_collide() -> None:
    first, second = InferenceMetrics(), InferenceMetrics()
    first.expired.inc()
    assert second.figures()["expired_total"] == 0 and first.figures()["expired_total"] == 1


@pytest.fixture(scope="module")
def engine_scorer():
    from inference.scorers.engine import EngineScorer
    from inference.checkpoints import resolve_model_dir

    scorer = EngineScorer(str(resolve_model_dir("tiny")))
    yield scorer
    scorer.close()


def test_inference_metrics_after_a_real_engine_batch(engine_scorer) -> None:
    from inference.fusion import FusionPolicy
    from inference.scorers.base import ScoreItem
    from inference.worker import make_forecast
    from schemas import InferenceRequest, Probs

    metrics = InferenceMetrics()
    requests = [InferenceRequest(id=f"r{i}", symbol="AAA", ts_ns=10**18 + i, horizon_s=60, trigger="cadence",
                                 prompt=f"AAA moved {i} bps (up, down or flat):", numeric=Probs(0.3, 0.3, 0.4),
                                 news_ids=(), adapter=None, ingest_wall_ns=1, created_wall_ns=2,
                                 deadline_wall_ns=None, features={}) for i in range(3)]
    results = engine_scorer.score([ScoreItem(r.id, r.prompt, None, None) for r in requests])
    metrics.engine.observe(engine_scorer)
    forecasts = [make_forecast(r, s, model="tiny", policy=FusionPolicy(), picked_wall_ns=3,
                               inference_ms=5.0) for r, s in zip(requests, results)]
    metrics.observe_forecasts(forecasts)
    endpoint = serve_metrics(metrics, env={})
    try:
        text = scrape(endpoint.port)
    finally:
        endpoint.close()
    assert sample(text, 'finllm_forecasts_total{status="ok"}') == 3
    assert sample(text, "finllm_tick_to_forecast_seconds_count") == 3
    assert sample(text, "finllm_engine_kv_blocks_free") > 0
    assert sample(text, 'finllm_engine_ttft_seconds{quantile="0.5"}') > 0
    assert sample(text, "finllm_engine_queue_depth") == 0
    figures = metrics.figures()
    assert figures["e2e_s_p50"] > 0 and figures["adapters_registered"] == []


def test_engine_counters_follow_the_engine_totals_without_double_counting(engine_scorer) -> None:
    from inference.scorers.base import ScoreItem

    metrics = InferenceMetrics()
    for deadline_ns in (1, None):  # the first one is long past its deadline: the engine expires it
        results = engine_scorer.score([ScoreItem("x", "BBB (up, down or flat):", None, deadline_ns)])
        metrics.engine.observe(engine_scorer)
    assert results[0].probs is not None
    expired_total = engine_scorer.metrics()["expired"]
    assert expired_total >= 1
    assert metrics.engine.counters["expired"]._value.get() == expired_total
    assert metrics.engine.figures()["kv_blocks_free"] == engine_scorer.metrics()["kv_blocks_free"]
