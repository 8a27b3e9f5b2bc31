import json
import math
from dataclasses import replace

import numpy as np
import pytest

from inference.fusion import (NUMERIC_ONLY, AdapterFusion, FusionPolicy, FusionWeights, fit_discounted, fit_weights,
                              fuse, fuse_arrays, fused_logloss, mean_logloss, total_variation)
from inference.scorers.base import ScoreResult
from inference.worker import make_forecast
from schemas import InferenceRequest, Probs

NUMERIC = Probs(0.4, 0.4, 0.2)


def test_fuse_is_a_weighted_product_of_experts():
    llm = Probs(0.7, 0.1, 0.2)
    fused = fuse(NUMERIC, llm, FusionWeights(1.0, 1.0))
    raw = [n * m for n, m in zip(NUMERIC.as_tuple(), llm.as_tuple())]
    assert fused.as_tuple() == pytest.approx([x / sum(raw) for x in raw])
    assert fuse(NUMERIC, llm, FusionWeights(1.0, 0.0)).as_tuple() == pytest.approx(NUMERIC.as_tuple())
    assert fuse(NUMERIC, None, FusionWeights()) == NUMERIC
    with pytest.raises(ValueError):
        FusionWeights(-0.1, 1.0)
    with pytest.raises(ValueError):
        FusionWeights(1.0, 1.0, (0.0, 0.0))                                  # one bias per label


def test_fuse_adds_each_labels_bias_to_its_log_odds():
    llm = Probs(0.5, 0.3, 0.2)
    fused = fuse(NUMERIC, llm, FusionWeights(0.0, 1.0, (0.0, math.log(2.0), 0.0)))
    assert fused.as_tuple() == pytest.approx([0.5 / 1.3, 0.6 / 1.3, 0.2 / 1.3])
    prior = fuse(NUMERIC, llm, FusionWeights(0.0, 0.0, (math.log(3.0), 0.0, 0.0)))   # no component: the prior
    assert prior.as_tuple() == pytest.approx([0.6, 0.2, 0.2])


def test_fit_weights_recovers_the_stack_that_drew_the_labels():
    """Labels drawn from a known stack (an LLM with skill and the wrong prior, a numeric forecast with a
    prior and no direction); the fit finds its weights and biases again."""
    rng = np.random.default_rng(7)
    n = 20000
    numeric = rng.dirichlet([8.0, 8.0, 5.0], n)
    llm = rng.dirichlet([2.0, 2.0, 2.0], n)
    truth = FusionWeights(0.5, 1.2, (0.4, -0.3, 0.0))
    p = fuse_arrays(numeric, llm, truth)
    y = (rng.random(n)[:, None] > p.cumsum(axis=1)).sum(axis=1)
    fitted, loss = fit_weights(numeric, llm, y)
    assert fitted.numeric == pytest.approx(0.5, abs=0.1) and fitted.llm == pytest.approx(1.2, abs=0.1)
    assert np.asarray(fitted.bias) == pytest.approx([0.4, -0.3, 0.0], abs=0.1)
    assert loss < mean_logloss(fuse_arrays(numeric, llm, FusionWeights(0.5, 1.2)), y)      # the biases count
    alone, _ = fit_weights(numeric, llm, y, use_llm=False)
    assert alone.llm == 0.0 and alone.numeric > 0


def test_fit_weights_keeps_an_llms_argmax_that_a_numeric_prior_would_move():
    """The numeric forecast knows the label shares and nothing else; the LLM knows the direction but says
    "flat" too often. The stack takes the prior from its biases and keeps the LLM's ranking."""
    rng = np.random.default_rng(8)
    n = 6000
    y = rng.choice(3, n, p=[0.4, 0.4, 0.2])
    numeric = np.tile([0.4, 0.4, 0.2], (n, 1)) + rng.normal(0, 0.01, (n, 3))
    numeric /= numeric.sum(axis=1, keepdims=True)
    seen = np.where(rng.random(n) < 0.5, y, rng.integers(0, 3, n))
    llm = np.tile([0.3, 0.3, 0.4], (n, 1))
    llm[np.arange(n), seen] += 0.3
    llm /= llm.sum(axis=1, keepdims=True)
    fitted, _ = fit_weights(numeric, llm, y)
    fused = fuse_arrays(numeric, llm, fitted)
    assert (fused.argmax(axis=1) == seen).mean() > 0.99            # the LLM's pick, less its "flat" habit
    assert mean_logloss(fused, y) < min(mean_logloss(numeric, y), mean_logloss(llm, y))


def test_fused_logloss_prefers_the_informative_expert():
    rows = [(NUMERIC, Probs(0.8, 0.1, 0.1), "up"), (NUMERIC, Probs(0.1, 0.8, 0.1), "down")]
    assert fused_logloss(rows, FusionWeights(1, 1)) < fused_logloss(rows, FusionWeights(1, 0))
    assert fused_logloss(rows, FusionWeights(1, 0)) == pytest.approx(-math.log(0.4))


def _experts(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(numeric, informative llm, noise llm, labels): the informative expert sees the label 60% of the time."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    numeric = np.tile([0.34, 0.33, 0.33], (n, 1))
    informed = np.where(rng.random(n) < 0.6, y, rng.integers(0, 3, n))
    llm = np.full((n, 3), 0.15)
    llm[np.arange(n), informed] = 0.7
    noise = rng.dirichlet(np.ones(3), n)
    return numeric, llm, noise, y


def test_fuse_arrays_is_fuse_row_by_row():
    numeric, llm, _, _ = _experts(20, seed=1)
    weights = FusionWeights(0.7, 1.3)
    rows = [fuse(Probs(*n), Probs(*m), weights).as_tuple() for n, m in zip(numeric, llm)]
    assert fuse_arrays(numeric, llm, weights) == pytest.approx(np.asarray(rows), abs=1e-12)


def test_fit_weights_trusts_an_informative_llm_and_ignores_noise():
    numeric, llm, noise, y = _experts(3000, seed=2)
    informed, loss = fit_weights(numeric, llm, y)
    assert informed.llm >= 0.5
    assert loss < fused_logloss([(Probs(*n), Probs(*m), "up down flat".split()[k]) for n, m, k in
                                 zip(numeric, llm, y)], FusionWeights(1.0, 0.0))
    ignored, _ = fit_weights(numeric, noise, y)
    assert ignored.llm <= 0.1
    with pytest.raises(ValueError):
        fit_weights(numeric[:0], llm[:0], y[:0])


def test_divergence_and_review_rules():
    policy = FusionPolicy(divergence_tv=0.3, review_move_bps=30)
    assert total_variation(NUMERIC, Probs(0.1, 0.7, 0.2)) == pytest.approx(0.3)
    assert policy.diverges(NUMERIC, Probs(0.05, 0.75, 0.2)) and not policy.diverges(NUMERIC, Probs(0.3, 0.5, 0.2))
    assert not policy.diverges(NUMERIC, None)
    down = Probs(0.1, 0.8, 0.1)
    assert policy.needs_review(down, 0.005)          # price up 50 bp since the news, the model says down
    assert not policy.needs_review(down, -0.005)     # agrees with the move
    assert not policy.needs_review(down, 0.001)      # the move is small
    assert not policy.needs_review(down, None)


def _request(**features):
    return InferenceRequest("r1", "ACME", 1_800_000_000_000_000_000, 60, "news", "p", NUMERIC, ("n1",), "fast",
                            10, 20, 10**19, dict(features))


def test_make_forecast_records_the_deep_opinion_and_fuses_it():
    policy = FusionPolicy(FusionWeights(1.0, 1.0), divergence_tv=0.3, deep_adapter="deep")
    fast, deep = ScoreResult("r1", (0.05, 0.9, 0.05)), ScoreResult("r1", (0.6, 0.2, 0.2))
    forecast = make_forecast(_request(ret_since_news=0.01), fast, model="m", policy=policy, picked_wall_ns=30,
                             inference_ms=4.0, deep=deep, deep_ms=1.5)
    assert forecast.divergent and forecast.review
    assert forecast.llm.as_tuple() == pytest.approx(fast.probs) and forecast.deep.as_tuple() == pytest.approx(deep.probs)
    assert forecast.probs.as_tuple() == pytest.approx(fuse(NUMERIC, forecast.deep, policy.weights).as_tuple())
    assert forecast.latency.deep_ms == 1.5 and forecast.status == "ok"
    calm = make_forecast(_request(), ScoreResult("r1", (0.4, 0.35, 0.25)), model="m", policy=policy,
                         picked_wall_ns=30, inference_ms=4.0)
    assert not calm.divergent and not calm.review and calm.deep is None
    expired = make_forecast(_request(), ScoreResult("r1", None, expired=True), model="m", policy=policy,
                            picked_wall_ns=30, inference_ms=0.0)
    assert expired.status == "expired" and expired.probs == NUMERIC and expired.llm is None


def test_fused_probabilities_are_plain_floats():
    """They go on the wire through orjson, which refuses numpy scalars."""
    fused = fuse(NUMERIC, Probs(0.7, 0.1, 0.2), FusionWeights(1.0, 0.5))
    assert all(type(p) is float for p in fused.as_tuple())


def test_fit_discounted_keeps_an_informative_llm_and_drops_a_useless_one():
    numeric, llm, noise, y = _experts(3000, seed=3)
    clusters = np.arange(y.size) // 10                   # rows come in correlated blocks
    kept, seen = fit_discounted(numeric, llm, y, clusters)
    assert seen["trusted"] and kept.llm >= 0.5 and seen["gain"] > 2 * seen["gain_se"]
    dropped, seen = fit_discounted(numeric, noise, y, clusters)
    assert not seen["trusted"] and dropped.llm == 0.0 and dropped.bias == (0.0, 0.0, 0.0)
    tempered = fuse_arrays(numeric, noise, dropped)                      # the numeric forecast's own ranking
    assert (tempered.argmax(axis=1) == numeric.argmax(axis=1)).all()
    few, seen = fit_discounted(numeric[:20], llm[:20], y[:20])
    assert few == NUMERIC_ONLY and not seen["trusted"]


def test_fit_discounted_drops_a_weak_gain_within_the_noise():
    """A model right 36% of the time where chance is 33%: a 60-row fit may like it, it is not shown to help."""
    rng = np.random.default_rng(4)
    y = rng.integers(0, 3, 60)
    numeric = np.tile([0.34, 0.33, 0.33], (60, 1))
    weak = np.full((60, 3), 0.3)
    weak[np.arange(60), np.where(rng.random(60) < 0.05, y, rng.integers(0, 3, 60))] = 0.4
    weights, seen = fit_discounted(numeric, weak, y)
    assert weights.llm == 0.0 and not seen["trusted"]


def test_policy_weights_per_adapter_and_news():
    fitted = AdapterFusion(FusionWeights(0.4, 1.2), FusionWeights(0.9, 0.0))
    policy = FusionPolicy(FusionWeights(0.3, 1.0), adapters={"sent": fitted})
    assert policy.weights_for("sent", True) == FusionWeights(0.4, 1.2)
    assert policy.weights_for("sent", False) == FusionWeights(0.9, 0.0)
    assert policy.weights_for("other", True) == FusionWeights(0.3, 1.0)     # no fit known: the global weights
    assert policy.weights_for(None, False) == NUMERIC_ONLY                  # no news, no fit: numeric only
    forced = FusionPolicy(FusionWeights(0.5, 0.5), adapters={"sent": fitted}, override=True)
    assert forced.weights_for("sent", False) == FusionWeights(0.5, 0.5)
    assert AdapterFusion.from_json(fitted.to_json() | {"fit": {}}) == fitted
    biased = AdapterFusion(FusionWeights(0.1, 0.5, (0.25, 0.5, 0.0)))
    assert AdapterFusion.from_json(json.loads(json.dumps(biased.to_json()))) == biased
    older = {side: {"numeric": 0.4, "llm": 1.2} for side in ("news", "no_news")}    # a card from before the biases
    assert AdapterFusion.from_json(older).news == FusionWeights(0.4, 1.2)


def test_policy_reads_the_cards_and_the_environment(tmp_path, monkeypatch):
    fitted = AdapterFusion(FusionWeights(0.2, 1.5), FusionWeights(1.0, 0.0))
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "card.json").write_text(json.dumps({"fusion": fitted.to_json()}))
    (tmp_path / "b").mkdir()                                               # no card: global weights
    monkeypatch.delenv("FINLLM_FUSION_W_NUMERIC", raising=False)
    monkeypatch.delenv("FINLLM_FUSION_W_LLM", raising=False)
    policy = FusionPolicy.from_env({"a": tmp_path / "a", "b": tmp_path / "b"})
    assert policy.adapters == {"a": fitted} and not policy.override
    monkeypatch.setenv("FINLLM_FUSION_W_LLM", "0.7")
    overridden = FusionPolicy.from_env({"a": tmp_path / "a"})
    assert overridden.override and overridden.weights_for("a", True) == FusionWeights(0.3, 0.7)


def test_make_forecast_fuses_with_the_requests_adapter_and_news():
    fitted = AdapterFusion(FusionWeights(1.0, 2.0), FusionWeights(1.0, 0.0))
    policy = FusionPolicy(adapters={"fast": fitted})
    llm = ScoreResult("r1", (0.7, 0.2, 0.1))
    with_news = make_forecast(_request(), llm, model="m", policy=policy, picked_wall_ns=30, inference_ms=1.0)
    assert with_news.probs.as_tuple() == pytest.approx(
        fuse(NUMERIC, Probs(0.7, 0.2, 0.1), FusionWeights(1.0, 2.0)).as_tuple())
    quiet = replace(_request(), news_ids=())
    without = make_forecast(quiet, llm, model="m", policy=policy, picked_wall_ns=30, inference_ms=1.0)
    assert without.probs.as_tuple() == pytest.approx(NUMERIC.as_tuple()) and without.llm is not None
