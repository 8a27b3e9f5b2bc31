"""Sampling: temperature, top-p, seeds and log-probabilities, per request, in the engine and in isolation."""
import math

import pytest
import torch

from inference.engine.config import EngineConfig
from inference.engine.engine import Engine
from inference.engine.sampling import pick_token, token_logprobs
from inference.engine.sequence import RequestKind, SamplingParams

from .conftest import ENGINE_DEVICE


def test_temperature_zero_is_argmax_and_top_p_keeps_only_the_nucleus():
    logits = torch.tensor([0.0, 3.0, 2.9, -5.0])
    assert pick_token(logits, SamplingParams(), 0) == 1
    tiny_nucleus = SamplingParams(temperature=1.0, top_p=1e-6, seed=3)
    assert {pick_token(logits, tiny_nucleus, n) for n in range(50)} == {1}
    two = SamplingParams(temperature=1.0, top_p=0.6, seed=3)    # tokens 1 and 2 hold ~0.52 and ~0.47
    assert {pick_token(logits, two, n) for n in range(200)} == {1, 2}


def test_sampling_follows_the_tempered_distribution_and_repeats_with_its_seed():
    logits = torch.tensor([1.0, 0.0, -1.0])
    params = SamplingParams(temperature=2.0, seed=7)
    draws = [pick_token(logits, params, n) for n in range(4000)]
    expected = torch.softmax(logits / 2.0, dim=-1).tolist()
    for token, p in enumerate(expected):
        assert abs(draws.count(token) / len(draws) - p) < 0.03
    assert draws == [pick_token(logits, params, n) for n in range(4000)]
    assert draws != [pick_token(logits, SamplingParams(temperature=2.0, seed=8), n) for n in range(4000)]


def test_token_logprobs_are_the_models_log_softmax():
    logits = torch.tensor([2.0, 1.0, 0.0])
    chosen, top = token_logprobs(logits, 1, 2)
    lse = math.log(sum(math.exp(v) for v in (2.0, 1.0, 0.0)))
    assert chosen == pytest.approx(1.0 - lse)
    assert [t for t, _ in top] == [0, 1] and top[0][1] == pytest.approx(2.0 - lse)
    assert token_logprobs(logits, 1, None) is None and token_logprobs(logits, 1, 0)[1] == ()


def test_invalid_sampling_parameters_are_refused():
    for bad in ({"temperature": -1}, {"top_p": 0}, {"top_p": 1.5}, {"logprobs": -1}):
        with pytest.raises(ValueError):
            SamplingParams(**bad)


def _generate(engine: Engine, rid: str, sampling: SamplingParams | None, prompt=(5, 9, 13, 2), max_new_tokens=12):
    engine.add_request(rid, list(prompt), RequestKind.GENERATE, max_new_tokens=max_new_tokens, sampling=sampling)
    (output,) = engine.run_until_done()
    return output


def test_engine_samples_per_request_reproducibly_with_a_seed(tiny_qwen2):
    engine = Engine(tiny_qwen2["model_dir"], EngineConfig(block_size=4, num_blocks=64), ENGINE_DEVICE)
    greedy = _generate(engine, "g", None).output_token_ids
    assert _generate(engine, "g0", SamplingParams(temperature=0.0)).output_token_ids == greedy
    hot = SamplingParams(temperature=5.0, seed=11)
    first = _generate(engine, "s1", hot).output_token_ids
    assert _generate(engine, "s2", hot).output_token_ids == first
    others = {_generate(engine, f"o{i}", SamplingParams(temperature=5.0, seed=100 + i)).output_token_ids
              for i in range(4)}
    assert len(others | {first, greedy}) > 2        # different seeds, different texts


def test_engine_reports_logprobs_of_each_generated_token(tiny_qwen2):
    engine = Engine(tiny_qwen2["model_dir"], EngineConfig(block_size=4, num_blocks=64), ENGINE_DEVICE)
    request = engine.add_request("lp", [5, 9, 13, 2], RequestKind.GENERATE, max_new_tokens=5,
                                 sampling=SamplingParams(logprobs=3))
    engine.run_until_done()
    assert len(request.output_logprobs) == 5
    for token, (chosen, top) in zip(request.output_token_ids, request.output_logprobs):
        assert len(top) == 3 and top[0][0] == token and chosen == pytest.approx(top[0][1]) and chosen <= 0


def test_a_preempted_sampled_request_draws_the_same_tokens(tiny_qwen2):
    config = EngineConfig(block_size=4, num_blocks=12, dtype="float64", enable_prefix_caching=False)
    hot = SamplingParams(temperature=1.0, seed=42)
    alone = Engine(tiny_qwen2["model_dir"], config, ENGINE_DEVICE)
    expected = _generate(alone, "a", hot, prompt=list(range(3, 11)), max_new_tokens=24).output_token_ids
    engine = Engine(tiny_qwen2["model_dir"], config, ENGINE_DEVICE)
    sampled = engine.add_request("a", list(range(3, 11)), RequestKind.GENERATE, max_new_tokens=24, sampling=hot)
    for _ in range(3):
        engine.step()
    engine.add_request("urgent", list(range(20, 28)), RequestKind.GENERATE, max_new_tokens=30, deadline_ns=2**62)
    engine.run_until_done()
    assert sampled.num_preemptions >= 1
    assert tuple(sampled.output_token_ids) == expected
