import logging
import time

import pytest
import torch

from inference.engine.config import EngineConfig
from inference.scorers.base import ScoreItem, ScoreResult
from inference.scorers.engine import EngineScorer

from .reference import HFReference


@pytest.fixture
def scorer(tiny_qwen2):
    scorer = EngineScorer(tiny_qwen2["model_dir"], {"a": tiny_qwen2["adapters"]["a"]},
                          config=EngineConfig(block_size=4, num_blocks=64))
    yield scorer
    scorer.close()


def test_parity_scorer_probs_match_reference_and_keep_order(scorer, tiny_qwen2):
    reference = HFReference(tiny_qwen2["model_dir"], {"a": tiny_qwen2["adapters"]["a"]})
    items = [ScoreItem("x", "the price rose", adapter="a"), ScoreItem("y", "the bond fell is market"),
             ScoreItem("z", "the stock", adapter="a")]
    results = scorer.score(items)
    assert [r.request_id for r in results] == ["x", "y", "z"]
    for item, result in zip(items, results):
        tokens = scorer.tokenizer.encode(item.prompt)
        logits = reference.last_logits(tokens, item.adapter)[list(scorer.label_token_ids)]
        assert torch.allclose(torch.tensor(result.probs), logits.softmax(-1), atol=1e-5)
        assert abs(sum(result.probs) - 1) < 1e-6 and not result.expired


def test_expired_item_is_answered_as_expired(scorer):
    past_ns = time.time_ns() - 1_000_000
    results = scorer.score([ScoreItem("late", "the price", deadline_ns=past_ns), ScoreItem("ok", "the price")])
    assert results[0].expired and results[0].probs is None
    assert results[1].probs is not None and not results[1].expired
    assert scorer.metrics()["expired"] == 1


def test_adapters_register_and_remove_at_runtime(scorer, tiny_qwen2):
    scorer.register_adapter("c", tiny_qwen2["adapters"]["c"])
    with_c, without = scorer.score([ScoreItem("1", "the rate", adapter="c"), ScoreItem("2", "the rate")])
    assert with_c.probs != without.probs
    scorer.remove_adapter("c")
    assert scorer.score([ScoreItem("3", "the rate", adapter="c")]) == [ScoreResult("3", None, expired=False)]
    metrics = scorer.metrics()
    assert {"queue_depth", "running", "kv_blocks_used", "kv_blocks_free", "prefix_cache_hit_rate",
            "adapter_loads", "adapter_evictions", "ttft_s_p50", "step_time_s_p50"} <= set(metrics)
    assert metrics["kv_blocks_used"] == 0 and metrics["adapter_loads"] == 1


def test_unknown_adapter_and_oversized_prompt_fail_per_item_and_log_once(scorer, caplog):
    items = [ScoreItem("u1", "the rate", adapter="nope"), ScoreItem("ok", "the price rose", adapter="a"),
             ScoreItem("u2", "the bond", adapter="nope"), ScoreItem("long", "the price " * 600)]
    with caplog.at_level(logging.WARNING, logger="finllm.engine"):
        results = scorer.score(items)
        again = scorer.score([ScoreItem("u3", "the stock", adapter="nope")])
    assert [r.request_id for r in results] == ["u1", "ok", "u2", "long"]
    assert [r.probs is None for r in results] == [True, False, True, True]
    assert not any(r.expired for r in results + again) and again[0].probs is None
    assert sum("'nope' is not registered" in m for m in caplog.messages) == 1
    assert scorer.metrics()["rejected_items"] == 4 and scorer.metrics()["kv_blocks_used"] == 0
