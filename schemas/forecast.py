"""Direction probabilities, inference requests (agents -> inference) and forecasts (inference -> users).

Tiers and revisions. Every trigger is answered by the base tier (`tier` "base", `revision` 0); a forecast
the base tier escalates (`escalated` true) is answered again by the deep tier under the same id, as
`revision` 1 with `tier` "deep". A consumer keeps, per forecast id, the copy with the highest revision
(`is_later_revision`). `status` says what the language model did: "ok" (it answered), "expired" (not in
time), "llm_error" (it failed), "skipped" (not asked: the numeric forecast was confident and no news came
since the symbol's last forecast; the forecast is the numeric one). Records written before the tiers carry
none of these fields and read as base, revision 0, not escalated.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Literal

from schemas import fields as f
from schemas.codec import parse_object
from schemas.errors import SchemaError

DIRECTIONS: tuple[str, ...] = ("up", "down", "flat")
MAX_PROMPT_CHARS = 64_000
Trigger = Literal["cadence", "news"]
Status = Literal["ok", "expired", "llm_error", "skipped"]
STATUSES: tuple[str, ...] = ("ok", "expired", "llm_error", "skipped")
Tier = Literal["base", "deep"]
TIERS: tuple[str, ...] = ("base", "deep")


@dataclass(frozen=True, slots=True)
class Probs:
    """Probabilities of the three directions; they sum to 1."""

    p_up: float
    p_down: float
    p_flat: float

    @classmethod
    def normalised(cls, p_up: float, p_down: float, p_flat: float) -> Probs:
        total = p_up + p_down + p_flat
        if not total > 0:
            raise SchemaError("bad_probability", "probabilities sum to zero")
        return cls(p_up / total, p_down / total, p_flat / total)

    @classmethod
    def from_obj(cls, obj: Any) -> Probs:
        if not isinstance(obj, dict):
            raise SchemaError("bad_type", "probabilities must be an object")
        probs = [f.probability(obj, name) for name in ("p_up", "p_down", "p_flat")]
        if abs(sum(probs) - 1.0) > 1e-6:
            raise SchemaError("bad_probability", f"probabilities sum to {sum(probs)}, not 1")
        return cls(*probs)

    def as_tuple(self) -> tuple[float, float, float]:
        return (self.p_up, self.p_down, self.p_flat)

    @property
    def direction(self) -> str:
        """The most probable direction; ties go to flat, then up."""
        order = sorted(zip(self.as_tuple(), (1, 0, 2), DIRECTIONS), reverse=True)
        return order[0][2]


def forecast_id(symbol: str, ts_ns: int, trigger: str, news_id: str | None = None) -> str:
    """Deterministic id: the same trigger always yields the same forecast id."""
    key = f"{symbol}|{ts_ns}|{trigger}|{news_id or ''}".encode()
    return hashlib.blake2b(key, digest_size=12).hexdigest()


@dataclass(frozen=True, slots=True)
class InferenceRequest:
    """What the agents send the inference worker when a trigger fires."""

    id: str
    symbol: str
    ts_ns: int
    horizon_s: int
    trigger: Trigger
    prompt: str
    numeric: Probs
    news_ids: tuple[str, ...]
    adapter: str | None
    ingest_wall_ns: int
    created_wall_ns: int
    deadline_wall_ns: int
    features: dict[str, float] = field(default_factory=dict)
    kind: Literal["forecast", "warmup"] = "forecast"   # warmup: prefill the prompt's prefix only, answer nothing
    new_news: int | None = None       # news in the prompt from the cadence period before the trigger (unseen by
                                      # the previous cadence forecast); None: not said (older agents)
    value: float | None = None        # what the language model's answer is worth, [0, 1] (inference.tiering)
    tier: Tier = "base"               # the pool it is for: "base" (every trigger) or "deep" (escalated ones)
    prompt_deep: str | None = None    # the deep tier's longer prompt (more news, price history); None: `prompt`
    base_llm: Probs | None = None     # deep requests: the base tier's answer, kept if the deep one fails

    @classmethod
    def from_obj(cls, obj: dict[str, Any]) -> InferenceRequest:
        return cls(
            f.identifier(obj, "id"), f.symbol(obj), f.timestamp_ns(obj), _horizon(obj),
            _trigger(obj), f.text(obj, "prompt", MAX_PROMPT_CHARS), Probs.from_obj(obj.get("numeric")),
            _ids(obj, "news_ids"), _adapter(obj), f.integer(obj, "ingest_wall_ns"),
            f.integer(obj, "created_wall_ns"), f.integer(obj, "deadline_wall_ns"), _features(obj),
            _choice(obj, "kind", ("forecast", "warmup")) if "kind" in obj else "forecast",
            _new_news(obj), None if obj.get("value") is None else f.probability(obj, "value"), _tier(obj),
            f.text(obj, "prompt_deep", MAX_PROMPT_CHARS, optional=True),
            None if obj.get("base_llm") is None else Probs.from_obj(obj["base_llm"]))

    @property
    def tier_prompt(self) -> str:
        """The prompt its tier scores: the deep tier's longer one where there is one."""
        return self.prompt_deep or self.prompt if self.tier == "deep" else self.prompt


@dataclass(frozen=True, slots=True)
class Latency:
    queue_ms: float
    inference_ms: float
    total_ms: float
    deep_ms: float = 0.0   # the divergence deep path's share of inference_ms


@dataclass(frozen=True, slots=True)
class Forecast:
    id: str
    symbol: str
    ts_ns: int
    horizon_s: int
    p_up: float
    p_down: float
    p_flat: float
    direction: str
    trigger: Trigger
    status: Status
    numeric: Probs
    llm: Probs | None
    news_ids: tuple[str, ...]
    model: str
    adapter: str | None
    latency: Latency
    published_wall_ns: int
    divergent: bool = False      # numeric and language model disagreed beyond the threshold
    deep: Probs | None = None    # the deep path's opinion (a second model call), fused instead of `llm`
    review: bool = False         # the language model contradicts a large move since its news
    tier: Tier = "base"          # which worker pool answered: "base" (every trigger) or "deep" (escalated)
    revision: int = 0            # 0: the first answer to this id; a deep answer to the same id is a later one
    escalated: bool = False      # this answer was sent to the deep tier: a later revision of this id follows

    @classmethod
    def from_obj(cls, obj: dict[str, Any]) -> Forecast:
        fused = Probs.from_obj(obj)
        llm = obj.get("llm")
        lat = obj.get("latency")
        if not isinstance(lat, dict):
            raise SchemaError("bad_type", "latency must be an object")
        return cls(
            f.identifier(obj, "id"), f.symbol(obj), f.timestamp_ns(obj), _horizon(obj),
            *fused.as_tuple(), _direction(obj), _trigger(obj), _status(obj), Probs.from_obj(obj.get("numeric")),
            None if llm is None else Probs.from_obj(llm), _ids(obj, "news_ids"),
            f.text(obj, "model", f.MAX_ID_CHARS), _adapter(obj),
            Latency(*(f.number(lat, k) for k in ("queue_ms", "inference_ms", "total_ms")),
                    f.number(lat, "deep_ms") if "deep_ms" in lat else 0.0),
            f.integer(obj, "published_wall_ns"), _flag(obj, "divergent"),
            None if obj.get("deep") is None else Probs.from_obj(obj["deep"]), _flag(obj, "review"),
            _tier(obj), _revision(obj), _flag(obj, "escalated"))

    @property
    def probs(self) -> Probs:
        return Probs(self.p_up, self.p_down, self.p_flat)


def _flag(obj: dict[str, Any], name: str) -> bool:
    value = obj.get(name, False)
    if not isinstance(value, bool):
        raise SchemaError("bad_type", f"{name} must be true or false")
    return value


def _tier(obj: dict[str, Any]) -> Tier:
    """Records from before the tiers carry no tier: the one worker answered them, as the base tier does now."""
    return _choice(obj, "tier", TIERS) if "tier" in obj else "base"


def _new_news(obj: dict[str, Any]) -> int | None:
    if obj.get("new_news") is None:
        return None
    value = f.integer(obj, "new_news")
    if value < 0:
        raise SchemaError("bad_new_news", f"new_news must be >= 0, got {value}")
    return value


def _revision(obj: dict[str, Any]) -> int:
    value = f.integer(obj, "revision") if "revision" in obj else 0
    if value < 0:
        raise SchemaError("bad_revision", f"revision must be >= 0, got {value}")
    return value


def is_later_revision(new: Forecast, kept: Forecast) -> bool:
    """Whether `new` replaces `kept`, two copies of one forecast id: a higher revision does, a copy of the
    same revision does not (delivery is at-least-once, so copies repeat)."""
    return new.revision > kept.revision


def _horizon(obj: dict[str, Any]) -> int:
    value = f.integer(obj, "horizon_s")
    if value <= 0:
        raise SchemaError("bad_horizon", f"horizon_s must be > 0, got {value}")
    return value


def _choice(obj: dict[str, Any], name: str, allowed: tuple[str, ...]) -> Any:
    value = f.require(obj, name)
    if value not in allowed:
        raise SchemaError(f"bad_{name}", f"{name} must be one of {allowed}, got {value!r}")
    return value


def _trigger(obj: dict[str, Any]) -> Trigger:
    return _choice(obj, "trigger", ("cadence", "news"))


def _status(obj: dict[str, Any]) -> Status:
    return _choice(obj, "status", STATUSES)


def _direction(obj: dict[str, Any]) -> str:
    return _choice(obj, "direction", DIRECTIONS)


def _adapter(obj: dict[str, Any]) -> str | None:
    return None if obj.get("adapter") is None else f.adapter_name(obj)


def _ids(obj: dict[str, Any], name: str) -> tuple[str, ...]:
    raw = obj.get(name, [])
    if not isinstance(raw, list):
        raise SchemaError("bad_type", f"{name} must be a list")
    return tuple(f.identifier({"id": item}, "id") for item in raw)


def _features(obj: dict[str, Any]) -> dict[str, float]:
    raw = obj.get("features", {})
    if not isinstance(raw, dict):
        raise SchemaError("bad_type", "features must be an object")
    return {str(k): f.number(raw, k) for k in raw}


def decode_request(data: bytes) -> InferenceRequest:
    return InferenceRequest.from_obj(parse_object(data))


def decode_forecast(data: bytes) -> Forecast:
    return Forecast.from_obj(parse_object(data))
