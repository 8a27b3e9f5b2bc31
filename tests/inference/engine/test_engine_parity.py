"""Our engine against transformers + PEFT: fp32 logits within 1e-4, identical greedy tokens."""
import random

import pytest
import torch

from inference.engine.config import EngineConfig
from inference.engine.engine import Engine
from inference.engine.sequence import RequestKind, RequestStatus

from .conftest import ENGINE_DEVICE
from .reference import HFReference

ADAPTERS = [None, "a", "b", "c"]


def make_engine(checkpoint: dict, **config) -> Engine:
    engine = Engine(checkpoint["model_dir"], EngineConfig(**config), ENGINE_DEVICE)
    for name, path in checkpoint["adapters"].items():
        engine.register_adapter(name, path)
    return engine


@pytest.fixture
def reference(tiny_checkpoint) -> HFReference:
    return HFReference(tiny_checkpoint["model_dir"], tiny_checkpoint["adapters"])


def test_parity_score_logits_mixed_adapters_chunked(tiny_checkpoint, reference):
    engine = make_engine(tiny_checkpoint, block_size=4, num_blocks=128, max_num_batched_tokens=48)
    rng = random.Random(0)
    vocab = list(range(engine.model.config.vocab_size))
    prompts = {}
    for i in range(10):
        prompts[str(i)] = ([rng.randrange(300) for _ in range(rng.randrange(3, 40))], ADAPTERS[i % 4])
        engine.add_request(str(i), prompts[str(i)][0], RequestKind.SCORE, adapter=prompts[str(i)][1],
                           label_token_ids=vocab)
    outputs = {o.request_id: o for o in engine.run_until_done()}
    assert len(outputs) == 10
    for rid, (tokens, adapter) in prompts.items():
        ours = torch.tensor(outputs[rid].label_logits)
        theirs = reference.last_logits(tokens, adapter)
        assert (ours - theirs).abs().max().item() <= 1e-4, (rid, adapter)


def test_parity_generate_with_preemption_and_prefix_hits(tiny_checkpoint, reference):
    engine = make_engine(tiny_checkpoint, block_size=4, num_blocks=24, max_num_batched_tokens=64,
                         max_adapter_slots=2)
    rng = random.Random(1)
    shared = [rng.randrange(300) for _ in range(16)]
    requests = {}
    for i in range(8):
        tokens = shared + [rng.randrange(300) for _ in range(rng.randrange(1, 12))]
        requests[str(i)] = (tokens, ADAPTERS[i % 4])
        engine.add_request(str(i), tokens, RequestKind.GENERATE, adapter=ADAPTERS[i % 4], max_new_tokens=12)
    engine.run_until_done()  # first wave fills the prefix cache
    for i in range(8, 16):
        tokens, adapter = requests[str(i - 8)][0][:18], ADAPTERS[i % 4]
        requests[str(i)] = (tokens, adapter)
        engine.add_request(str(i), tokens, RequestKind.GENERATE, adapter=adapter, max_new_tokens=12)
    outputs = {o.request_id: o for o in engine.run_until_done()}
    metrics = engine.metrics()
    assert metrics["preemptions"] > 0 and metrics["prefix_cache_hit_rate"] > 0
    assert metrics["adapter_evictions"] > 0 and metrics["kv_blocks_used"] == 0
    assert any(o.num_cached_tokens > 0 for o in outputs.values())
    for rid in map(str, range(8, 16)):
        tokens, adapter = requests[rid]
        assert outputs[rid].status is RequestStatus.FINISHED
        assert list(outputs[rid].output_token_ids) == reference.greedy(tokens, adapter, 12), rid


def test_parity_score_labels_and_stop_tokens(tiny_checkpoint, reference):
    engine = make_engine(tiny_checkpoint, block_size=8, num_blocks=64)
    tokens = list(range(5, 30))
    expected = reference.greedy(tokens, "b", 20)
    stop = expected[3]
    engine.add_request("g", tokens, RequestKind.GENERATE, adapter="b", max_new_tokens=20, stop_token_ids=[stop])
    engine.add_request("s", tokens, RequestKind.SCORE, adapter="c", label_token_ids=[7, 9, 11])
    outputs = {o.request_id: o for o in engine.run_until_done()}
    assert list(outputs["g"].output_token_ids) == expected[:expected.index(stop) + 1]
    theirs = reference.last_logits(tokens, "c")[[7, 9, 11]]
    assert (torch.tensor(outputs["s"].label_logits) - theirs).abs().max().item() <= 1e-4


def _run(engine: Engine, request_id: str, tokens: list[int], adapter: str | None, **kwargs):
    kind = RequestKind.GENERATE if "max_new_tokens" in kwargs else RequestKind.SCORE
    engine.add_request(request_id, tokens, kind, adapter=adapter, **kwargs)
    [output] = engine.run_until_done()
    return output


@pytest.mark.parametrize("adapter, dtype, atol", [(None, "float32", 1e-4), ("b", "float32", 1e-4),
                                                  ("b", "float64", 1e-12)])   # float64: 0.0 seen
def test_head_warm_up_then_head_plus_tail_matches_no_prefix_caching(tiny_checkpoint, adapter, dtype, atol):
    """A warm-up of a prompt's head leaves its partial last block; head + tail takes it over."""
    cached = make_engine(tiny_checkpoint, block_size=16, num_blocks=32, dtype=dtype)
    plain = make_engine(tiny_checkpoint, block_size=16, num_blocks=32, dtype=dtype, enable_prefix_caching=False)
    labels = list(range(cached.model.config.vocab_size))
    rng = random.Random(3)
    for head_len in (1, 15, 16, 17, 37):
        head = [rng.randrange(300) for _ in range(head_len)]
        for kind, kwargs in (("s", {"label_token_ids": labels}), ("g", {"max_new_tokens": 6})):
            tokens = head + [rng.randrange(300) for _ in range(20)]
            _run(cached, f"warm-{kind}{head_len}", head, adapter, label_token_ids=[1])
            ours = _run(cached, f"{kind}{head_len}", tokens, adapter, **kwargs)
            theirs = _run(plain, f"{kind}{head_len}", tokens, adapter, **kwargs)
            assert (ours.num_cached_tokens, theirs.num_cached_tokens) == (head_len, 0), (head_len, kind)
            assert ours.output_token_ids == theirs.output_token_ids, (head_len, kind)
            if kind == "s":
                ours_logits, theirs_logits = torch.tensor(ours.label_logits), torch.tensor(theirs.label_logits)
                assert torch.allclose(ours_logits, theirs_logits, rtol=0, atol=atol), head_len
    assert cached.metrics()["kv_blocks_used"] == 0
    other = _run(cached, "other-adapter", head + [1, 2, 3], "c", label_token_ids=[1])
    assert other.num_cached_tokens == 0
