"""The tier policy: the value of the language model's answer, skipping it, and escalating to the deep tier."""
import orjson
import pytest

from inference.tiering import TierPolicy, uncertainty, value_first
from schemas import Probs, decode_request
from tests.schemas.test_revisions import request_obj

SURE = Probs(0.05, 0.05, 0.9)          # uncertainty ~0.36
UNSURE = Probs(0.34, 0.33, 0.33)       # ~1
POLICY = TierPolicy()


def test_uncertainty_is_zero_for_a_sure_forecast_and_one_for_a_uniform_one():
    assert uncertainty(Probs(0.0, 0.0, 1.0)) == 0.0
    assert uncertainty(Probs(1 / 3, 1 / 3, 1 / 3)) == pytest.approx(1.0)
    assert 0.3 < uncertainty(SURE) < 0.4


def test_value_grows_with_numeric_uncertainty_and_with_new_news():
    values = [POLICY.llm_value(UNSURE, True, n) for n in (0, 1, 2, 5)]
    assert values == sorted(values) and values[0] == pytest.approx(0.5, abs=0.01) and values[-1] > 0.98
    assert POLICY.llm_value(SURE, True, 1) < POLICY.llm_value(UNSURE, True, 1)
    assert POLICY.llm_value(UNSURE, False, 0) == pytest.approx(0.1, abs=0.01)    # no news: little to add
    assert POLICY.llm_value(UNSURE, True, None) == POLICY.llm_value(UNSURE, True, 1)   # unknown: counted new


@pytest.mark.parametrize("numeric, new_news, route", [
    (SURE, 0, "skip"),          # confident, nothing new: the numeric forecast is the answer
    (SURE, 1, "base"),          # confident, but news came
    (SURE, None, "base"),       # an old request that does not say: asked
    (UNSURE, 0, "base"),        # not confident
])
def test_route_skips_only_a_confident_forecast_without_new_news(numeric, new_news, route):
    assert POLICY.route(numeric, new_news) == route


def test_escalation_reasons():
    value = POLICY.llm_value(UNSURE, True, 1)
    assert POLICY.escalation_reasons(Probs(0.2, 0.2, 0.6), Probs(0.7, 0.1, 0.2), False, value) == ("divergent",)
    assert POLICY.escalation_reasons(UNSURE, Probs(0.38, 0.31, 0.31), False, value) == ("low_confidence",)
    assert POLICY.escalation_reasons(UNSURE, Probs(0.5, 0.3, 0.2), True, value) == ("review",)
    assert POLICY.escalation_reasons(UNSURE, Probs(0.6, 0.2, 0.2), False, value) == ()     # agrees, sure
    assert POLICY.escalation_reasons(Probs(0.3, 0.3, 0.4), Probs(0.36, 0.3, 0.34), False, value) == \
        ("low_confidence",)      # different top direction but within the divergence threshold


def test_no_escalation_without_an_answer_or_below_the_value_floor():
    low = POLICY.llm_value(UNSURE, False, 0)
    assert POLICY.escalation_reasons(UNSURE, Probs(0.7, 0.1, 0.2), True, low) == ()
    assert POLICY.escalation_reasons(UNSURE, None, True, 1.0) == ()


def test_settings_from_the_environment_are_checked(monkeypatch):
    monkeypatch.setenv("FINLLM_TIER_CONFIDENT", "0.5")
    assert TierPolicy.from_env().confident_uncertainty == 0.5
    with pytest.raises(ValueError):
        TierPolicy(min_escalation_value=2.0)


def test_plan_sets_each_value_and_names_the_skipped():
    confident = {"p_up": 0.05, "p_down": 0.05, "p_flat": 0.9}
    sure = decode_request(orjson.dumps(request_obj(id="sure", new_news=0, news_ids=["n1"], numeric=confident)))
    fresh = decode_request(orjson.dumps(request_obj(id="fresh", new_news=1, news_ids=["n1"])))
    planned, skipped = POLICY.plan([sure, fresh])
    assert skipped == {"sure"} and all(r.value is not None for r in planned)
    deep = POLICY.deep_request(planned[1], Probs(0.5, 0.3, 0.2), now_ns=5)
    assert (deep.id, deep.tier, deep.base_llm, deep.deadline_wall_ns) == ("fresh", "deep", Probs(0.5, 0.3, 0.2),
                                                                          5 + POLICY.deep_deadline_ms * 10**6)


def test_value_first_sheds_the_least_valuable_and_keeps_every_kept_deadline():
    def req(rid, value, deadline):
        return decode_request(orjson.dumps(request_obj(id=rid, value=value, deadline_wall_ns=deadline)))

    requests = [req("low-early", 0.1, 10), req("high-late", 0.9, 30), req("mid", 0.5, 20), req("high-2", 0.8, 25)]
    live, late = value_first(requests, now_ns=0, cost_ns=10)
    assert [r.id for r in live] == ["mid", "high-2", "high-late"] and [r.id for r in late] == ["low-early"]
    no_values = [req(r.id, 0.0, r.deadline_wall_ns) for r in requests]
    assert [r.id for r in value_first(no_values, 0, 10)[1]] == ["high-2"]   # blind to value: a valuable one shed
