"""What a replay produced: counts, latency percentiles and directional accuracy against the tape."""
from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import polars as pl

from agents.config import AgentsConfig
from schemas import Forecast
from streams.tape import Tape


def forecasts_frame(forecasts: list[Forecast], tape: Tape | None = None, flat_bps: float = 5.0) -> pl.DataFrame:
    """One row per forecast with every field flattened; `realised` is added when a tape is given."""
    rows = [_flat(f) for f in sorted(forecasts, key=lambda f: (f.ts_ns, f.symbol, f.id))]
    frame = pl.DataFrame(rows, schema=_SCHEMA, orient="row") if rows else pl.DataFrame(schema=_SCHEMA)
    if tape is not None and rows:
        frame = frame.with_columns(tape.realised_directions(frame, flat_bps=flat_bps).alias("realised"))
    return frame


def build_report(tape: Tape, cfg: AgentsConfig, expected: set[str], result: dict[str, Any]) -> dict[str, Any]:
    forecasts: list[Forecast] = result["forecasts"]           # the latest revision of each: what a reader keeps
    first: list[Forecast] = result.get("first_answers", forecasts)   # what answered each trigger, in time or not
    revisions = [f for f in forecasts if f.revision > 0]
    frame = forecasts_frame(forecasts, tape, cfg.flat_bps)
    got = {f.id for f in forecasts}
    stats = result.get("replay")
    return {
        "events": stats.events if stats else 0, "ticks": stats.ticks if stats else 0,
        "news": stats.news if stats else 0, "replay_s": round(stats.duration_s, 3) if stats else None,
        "triggers": len(expected), "forecasts": len(got & expected), "missing": len(expected - got),
        "unexpected": len(got - expected),
        "wire_duplicates": result["wire_forecasts"] - result.get("wire_revisions", len(got)),
        "deadletters": result["deadletters"], "status": dict(Counter(f.status for f in first)),
        "revision_status": dict(Counter(f.status for f in revisions)),
        "revision_latency_ms": _percentiles([f.latency.total_ms for f in revisions]),
        "divergent": sum(f.divergent for f in forecasts), "deep_path": sum(f.deep is not None for f in forecasts),
        "deep_ms": _percentiles([f.latency.deep_ms for f in forecasts if f.deep is not None]),
        "review": sum(f.review for f in forecasts), **tier_counts(forecasts),
        "latency_ms": _percentiles([f.latency.total_ms for f in first]),
        "queue_ms": _percentiles([f.latency.queue_ms for f in first]),
        "inference_ms": _percentiles([f.latency.inference_ms for f in first]),
        **_accuracy(frame), "startup_s": round(result["startup_s"], 2), "engine": result["engine"],
        "model": forecasts[0].model if forecasts else None, "partitions": result["partitions"],
        "speed": result["speed"], "horizon_s": cfg.horizon_s, "flat_bps": cfg.flat_bps,
        "worker_exit_codes": result["exit_codes"], "topic_prefix": result["topic_prefix"],
    }


def tier_counts(forecasts: list[Forecast]) -> dict[str, Any]:
    """Of the latest revision of each forecast: how many each tier answered, the share answered deep,
    how many were escalated and still wait for their deep revision, and how many skipped the language model."""
    tiers = Counter(f.tier for f in forecasts)
    return {"tiers": dict(tiers), "deep_share": round(tiers["deep"] / len(forecasts), 4) if forecasts else None,
            "awaiting_deep": sum(f.escalated for f in forecasts),
            "skipped_llm": sum(f.status == "skipped" for f in forecasts)}


def _percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p99": None, "max": None}
    arr = np.asarray(values)
    return {"p50": round(float(np.percentile(arr, 50)), 2), "p99": round(float(np.percentile(arr, 99)), 2),
            "max": round(float(arr.max()), 2)}


def _accuracy(frame: pl.DataFrame) -> dict[str, Any]:
    """Share of forecasts whose most probable direction was the realised one (where it is known)."""
    if frame.is_empty():
        return {"accuracy": None, "accuracy_numeric": None, "accuracy_llm": None, "scored": 0}
    scored = frame.filter(pl.col("realised").is_not_null())
    out: dict[str, Any] = {"scored": scored.height}
    for key, column in (("accuracy", "direction"), ("accuracy_numeric", "numeric_direction"),
                        ("accuracy_llm", "llm_direction")):
        rows = scored.filter(pl.col(column).is_not_null())
        out[key] = round(float((rows[column] == rows["realised"]).mean()), 4) if rows.height else None
    out["realised_share"] = {d: round(float((scored["realised"] == d).mean()), 4) if scored.height else None
                             for d in ("up", "down", "flat")}
    return out


_SCHEMA = {
    "id": pl.String, "symbol": pl.String, "ts_ns": pl.Int64, "horizon_s": pl.Int64, "p_up": pl.Float64,
    "p_down": pl.Float64, "p_flat": pl.Float64, "direction": pl.String, "trigger": pl.String, "status": pl.String,
    "numeric_p_up": pl.Float64, "numeric_p_down": pl.Float64, "numeric_p_flat": pl.Float64,
    "numeric_direction": pl.String, "llm_p_up": pl.Float64, "llm_p_down": pl.Float64, "llm_p_flat": pl.Float64,
    "llm_direction": pl.String, "news_ids": pl.List(pl.String), "model": pl.String, "adapter": pl.String,
    "queue_ms": pl.Float64, "inference_ms": pl.Float64, "total_ms": pl.Float64, "published_wall_ns": pl.Int64,
    "divergent": pl.Boolean, "deep_p_up": pl.Float64, "deep_p_down": pl.Float64, "deep_p_flat": pl.Float64,
    "review": pl.Boolean, "tier": pl.String, "revision": pl.Int64, "escalated": pl.Boolean,
}


def _flat(f: Forecast) -> tuple:
    llm = f.llm.as_tuple() if f.llm else (None, None, None)
    return (f.id, f.symbol, f.ts_ns, f.horizon_s, f.p_up, f.p_down, f.p_flat, f.direction, f.trigger, f.status,
            *f.numeric.as_tuple(), f.numeric.direction, *llm, f.llm.direction if f.llm else None,
            list(f.news_ids), f.model, f.adapter, f.latency.queue_ms, f.latency.inference_ms, f.latency.total_ms,
            f.published_wall_ns, f.divergent, *(f.deep.as_tuple() if f.deep else (None, None, None)), f.review,
            f.tier, f.revision, f.escalated)
