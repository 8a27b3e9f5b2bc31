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
