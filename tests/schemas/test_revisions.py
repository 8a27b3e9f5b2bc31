"""Tiers and revisions on the wire: the fields, their defaults for old records, and which copy wins."""
import orjson
import pytest

import schemas as s

TS = 1_767_623_400_000_000_000
PROBS = s.Probs(0.5, 0.3, 0.2)


def forecast(**kw) -> s.Forecast:
    base = s.Forecast("f1", "ACME", TS, 60, *PROBS.as_tuple(), "up", "cadence", "ok", PROBS, None, (), "m", None,
                      s.Latency(1.0, 2.0, 3.0), 1)
    return base if not kw else s.Forecast.from_obj(orjson.loads(s.encode(base)) | kw)


def test_an_old_record_without_tier_fields_reads_as_the_first_base_answer():
    obj = orjson.loads(s.encode(forecast()))
    for name in ("tier", "revision", "escalated"):
        del obj[name]
    old = s.decode_forecast(orjson.dumps(obj))
    assert (old.tier, old.revision, old.escalated) == ("base", 0, False)


def test_a_deep_revision_round_trips():
    deep = forecast(tier="deep", revision=1, status="ok")
    assert s.decode_forecast(s.encode(deep)) == deep and deep.tier == "deep" and deep.revision == 1


def test_a_skipped_forecast_round_trips():
    skipped = forecast(status="skipped")
    assert s.decode_forecast(s.encode(skipped)).status == "skipped"


@pytest.mark.parametrize("field, value, reason", [
    ("tier", "medium", "bad_tier"), ("revision", -1, "bad_revision"), ("revision", 1.5, "bad_type"),
    ("escalated", "yes", "bad_type"), ("status", "maybe", "bad_status"),
])
def test_bad_tier_fields_are_rejected_with_reason(field, value, reason):
    obj = orjson.loads(s.encode(forecast())) | {field: value}
    with pytest.raises(s.SchemaError) as err:
        s.decode_forecast(orjson.dumps(obj))
    assert err.value.reason == reason


def test_only_a_higher_revision_replaces_a_kept_copy():
    base, deep = forecast(), forecast(tier="deep", revision=1)
    assert s.is_later_revision(deep, base)
    assert not s.is_later_revision(base, deep) and not s.is_later_revision(base, base)


def request_obj(**kw) -> dict:
    return {"id": "r", "symbol": "ACME", "ts_ns": TS, "horizon_s": 60, "trigger": "cadence", "prompt": "short",
            "numeric": {"p_up": 0.2, "p_down": 0.2, "p_flat": 0.6}, "news_ids": [], "adapter": None,
            "ingest_wall_ns": 1, "created_wall_ns": 1, "deadline_wall_ns": 2} | kw


def test_an_old_request_reads_as_a_base_request_of_unknown_value():
    request = s.decode_request(orjson.dumps(request_obj()))
    assert (request.tier, request.value, request.new_news, request.prompt_deep) == ("base", None, None, None)
    assert request.tier_prompt == "short"


def test_a_deep_request_scores_its_longer_prompt_and_round_trips():
    deep = s.decode_request(orjson.dumps(request_obj(tier="deep", prompt_deep="long", value=0.7, new_news=2,
                                                     base_llm={"p_up": 0.5, "p_down": 0.3, "p_flat": 0.2})))
    assert deep.tier_prompt == "long" and s.decode_request(s.encode(deep)) == deep


@pytest.mark.parametrize("field, value, reason", [
    ("value", 1.5, "bad_probability"), ("new_news", -1, "bad_new_news"), ("tier", "x", "bad_tier"),
    ("prompt_deep", 5, "bad_type"),
])
def test_bad_request_tier_fields_are_rejected_with_reason(field, value, reason):
    with pytest.raises(s.SchemaError) as err:
        s.decode_request(orjson.dumps(request_obj(**{field: value})))
    assert err.value.reason == reason
