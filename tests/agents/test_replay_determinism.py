"""Replaying the same tape twice, at different speeds and partition counts, gives byte-identical forecasts.

Latency fields (queue_ms, inference_ms, total_ms, published_wall_ns) are wall-clock measurements and are
left out; everything else (ids, probabilities of every component, news ids, adapters, flags) must be equal
byte for byte. The paged engine computes in its default dtype for this processor (bfloat16 where the CPU
has native bf16, else float32) in batch-invariant mode, so which requests share a batch, or whether a
prefix came from the cache, changes no bit of a request's logits. Run on the tiny fixture model and on the
product's default model (SmolLM2-135M-Instruct with its shipped adapters in the deep tier, its distilled
8-layer student in the base tier).

Whether a forecast expires is a wall-clock outcome by design (its deadline), and a CPU without native bf16
cannot answer the real model's triggers in time when the tape is replayed as fast as possible; so the test
lifts the deadlines (FINLLM_DEADLINE_MS, FINLLM_DEEP_DEADLINE_MS) and every trigger gets the model's answer.
"""
import orjson
import polars as pl
import pytest

from agents.lab.demo import DemoOptions, run_demo
from streams.synth import write_synth_tape

pytestmark = pytest.mark.integration
WALL_CLOCK = ("queue_ms", "inference_ms", "total_ms", "published_wall_ns")


def canonical(out_dir) -> list[bytes]:
    frame = pl.read_parquet(out_dir / "forecasts.parquet").drop(WALL_CLOCK).sort("id")
    return [orjson.dumps(row, option=orjson.OPT_SORT_KEYS) for row in frame.iter_rows(named=True)]


@pytest.mark.parametrize("model", ["tiny", "smollm2-135m"])
def test_two_replays_at_different_speeds_and_partitions_are_byte_identical(tmp_path, kafka_bootstrap, redis_url,
                                                                           model, monkeypatch):
    monkeypatch.setenv("FINLLM_DEADLINE_MS", "900000")
    monkeypatch.setenv("FINLLM_DEEP_DEADLINE_MS", "900000")
    tape = tmp_path / "tape"
    write_synth_tape(tape, 3, 10, seed=5)
    runs = {}
    for name, speed, partitions, bundle_ms in (("slow", 60.0, 1, 0), ("fast", None, 4, 1000)):
        out = tmp_path / name
        report = run_demo(DemoOptions(out, tape, speed=speed, partitions=partitions, bootstrap=kafka_bootstrap,
                                      redis_url=redis_url, engine="paged", model=model, timeout_s=900,
                                      bundle_ms=bundle_ms))
        assert report["missing"] == 0 and report["partitions"] == partitions
        # the base tier skips the model for confident forecasts without new news (inference.tiering); nothing
        # expires or fails
        assert set(report["status"]) <= {"ok", "skipped"} and report["status"].get("ok"), report["status"]
        runs[name] = canonical(out)
    slow, fast = runs["slow"], runs["fast"]
    assert len(slow) == len(fast) > 20
    frame = pl.read_parquet(tmp_path / "slow" / "forecasts.parquet")
    asked = frame.filter(pl.col("status") == "ok")
    assert asked["llm_p_up"].null_count() == 0 and frame["adapter"].null_count() == 0
    assert (frame["trigger"] == "news").sum() > 0 and frame["news_ids"].list.len().max() > 0
    if model == "smollm2-135m":   # the base tier answers with the distilled student, the deep tier with the model
        by_tier = {tier: set(part["model"]) for (tier,), part in frame.group_by("tier")}
        assert {m.split("@")[0] for m in by_tier["base"]} == {"smollm2-135m-l8-v1"}, by_tier
        assert {m.split("@")[0] for m in by_tier.get("deep", {"smollm2-135m-instruct-v1"})} == {"smollm2-135m-instruct-v1"}
    differing = [(a, b) for a, b in zip(slow, fast) if a != b]
    assert not differing, f"{len(differing)} forecasts differ, first:\n{differing[0][0]!r}\n{differing[0][1]!r}"
