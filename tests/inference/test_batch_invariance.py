"""Batch invariance of the paged engine on CPU (issue 16, item 3): a score request's label logits are
bit-identical whatever it is batched with.

The property: the target request's logits computed alone (no prefix cache, whole prompt in one step) equal
its logits computed among 1 to 63 random others (score and generate requests, LoRA adapters mixed, some
sharing its prefix), with the prompt prefilled in chunks of a small token budget, and after a prefix-cache
hit. Checked in float32, bfloat16 and int8 (`quant="int8"`, invariant by construction: see
inference/kernels/int8.py) on the tiny test model, and on the real model when its folder exists.
"""
from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inference.engine.config import EngineConfig
from inference.engine.engine import Engine
from inference.engine.sequence import RequestKind
from tests.inference.engine.conftest import build_checkpoint

ADAPTERS = (None, "a", "b", "c")
LABELS = (5, 17, 200, 301)
BUDGETS = (16, 40, 4096)           # tokens per step: prompts prefilled in chunks, or in one go
REAL_MODEL = Path("/root/.cache/finllm/models/smollm2-135m-instruct-v1")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> dict:
    return build_checkpoint(tmp_path_factory.mktemp("invariance"), "qwen2", tie=False)


class Engines:
    """One engine per (dtype, quant, budget, prefix caching), reused across examples (each drains its requests)."""

    def __init__(self, checkpoint: dict) -> None:
        self.checkpoint = checkpoint
        self.engines: dict[tuple, Engine] = {}
        self.ids = iter(range(10 ** 9))

    def get(self, dtype: str, quant: str, budget: int, caching: bool) -> Engine:
        key = (dtype, quant, budget, caching)
        if key not in self.engines:
            config = EngineConfig(dtype=dtype, block_size=16, num_blocks=1200, max_num_batched_tokens=budget,
                                  max_num_seqs=64, max_adapter_slots=4, enable_prefix_caching=caching,
                                  quant=quant)
            engine = Engine(self.checkpoint["model_dir"], config)
            for name, path in self.checkpoint["adapters"].items():
                engine.register_adapter(name, path)
            assert engine.runner.batch_invariant
            self.engines[key] = engine
        return self.engines[key]

    def score(self, engine: Engine, target: tuple[list[int], str | None],
              others: list[tuple[list[int], str | None, bool]] = ()) -> tuple[tuple[float, ...], int]:
        """The target's label logits and cached prompt tokens, submitted among `others` (all queued at once)."""
        rid = f"target-{next(self.ids)}"
        position = len(others) // 2
        for i, (tokens, adapter, generate) in enumerate(others):
            if i == position:
                self._add_target(engine, rid, target)
            if generate:
                engine.add_request(f"o-{next(self.ids)}", tokens, RequestKind.GENERATE, adapter=adapter,
                                   max_new_tokens=3)
            else:
                engine.add_request(f"o-{next(self.ids)}", tokens, RequestKind.SCORE, adapter=adapter,
                                   label_token_ids=LABELS)
        if not others:
            self._add_target(engine, rid, target)
        output = next(o for o in engine.run_until_done() if o.request_id == rid)
        return output.label_logits, output.num_cached_tokens

    @staticmethod
    def _add_target(engine: Engine, rid: str, target: tuple[list[int], str | None]) -> None:
        engine.add_request(rid, target[0], RequestKind.SCORE, adapter=target[1], label_token_ids=LABELS)


@pytest.fixture(scope="module")
def engines(checkpoint) -> Engines:
    return Engines(checkpoint)


tokens = st.lists(st.integers(0, 319), min_size=1, max_size=160)


@st.composite
def compositions(draw):
    target = (draw(st.lists(st.integers(0, 319), min_size=1, max_size=300)), draw(st.sampled_from(ADAPTERS)))
    rng = random.Random(draw(st.integers(0, 2 ** 32)))
    others = []
    for _ in range(draw(st.integers(1, 63))):
        prompt = [rng.randrange(320) for _ in range(rng.randrange(1, 160))]
        if rng.random() < 0.25:    # shares the target's prefix
            prompt = target[0][:rng.randrange(1, len(target[0]) + 1)] + prompt[:20]
        others.append((prompt, rng.choice(ADAPTERS), rng.random() < 0.2))
    return target, others, draw(st.sampled_from(BUDGETS)), draw(st.booleans())


@pytest.mark.parametrize("dtype, quant", [("float32", "none"), ("bfloat16", "none"), ("float32", "int8")])
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=compositions())
def test_label_logits_do_not_depend_on_the_batch(engines, dtype, quant, case):
    target, others, budget, warm = case
    alone, _ = engines.score(engines.get(dtype, quant, 4096, caching=False), target)
    engine = engines.get(dtype, quant, budget, caching=True)
    if warm:   # the target's prompt (or a longer one with its prefix) was seen: its blocks are cached
        engines.score(engine, (target[0] + [1, 2, 3], target[1]))
    batched, cached = engines.score(engine, target, others)
    assert batched == alone
    if warm and len(target[0]) > 16:
        assert cached > 0
    chunked, _ = engines.score(engines.get(dtype, quant, 16, caching=False), target)
    assert chunked == alone


@pytest.mark.skipif(not (REAL_MODEL / "config.json").exists(), reason="the real model is not downloaded")
def test_real_model_bf16_label_logits_do_not_depend_on_the_batch():
    """SmolLM2-135M in bfloat16: alone, among 12 others, chunked by 96 tokens, after a prefix hit."""
    rng = random.Random(0)
    prompt = lambda n: [rng.randrange(1000, 40000) for _ in range(n)]   # noqa: E731

    def engine(budget: int, caching: bool) -> Engine:
        return Engine(str(REAL_MODEL), EngineConfig(dtype="bfloat16", max_num_batched_tokens=budget,
                                                    enable_prefix_caching=caching, num_blocks=256))

    def score(e: Engine, target: list[int], others: list[list[int]] = ()) -> tuple[float, ...]:
        for i, other in enumerate(others):
            e.add_request(f"o{i}-{len(other)}-{rng.random()}", other, RequestKind.SCORE, label_token_ids=LABELS)
        e.add_request("t", target, RequestKind.SCORE, label_token_ids=LABELS)
        return next(o for o in e.run_until_done() if o.request_id == "t").label_logits

    target = prompt(150)
    alone = score(engine(4096, False), target)
    assert score(engine(4096, False), target, [prompt(rng.randrange(5, 200)) for _ in range(12)]) == alone
    assert score(engine(96, False), target, [prompt(40) for _ in range(3)]) == alone
    warm = engine(4096, True)
    score(warm, target[:100] + prompt(30))
    assert score(warm, target, [prompt(60), target[:64] + prompt(10)]) == alone


def test_the_cpu_scorer_defaults_to_the_fast_dtype_batch_invariant(tiny_model_dir):
    import torch

    from inference.engine.cpu import default_dtype
    from inference.scorers.factory import build_scorer

    scorer = build_scorer("paged", tiny_model_dir, device="cpu")
    assert scorer.engine.model.embed.dtype == getattr(torch, default_dtype("cpu"))
    assert scorer.engine.runner.batch_invariant
    assert not build_scorer("paged", tiny_model_dir, device="cpu", batch_invariant=False).engine.runner.batch_invariant


@pytest.mark.parametrize("value, expected", [(None, None), ("0", False), ("off", False), ("1", True)])
def test_worker_reads_the_batch_invariant_setting(monkeypatch, value, expected):
    from inference.worker import WorkerConfig

    if value is None:
        monkeypatch.delenv("FINLLM_ENGINE_BATCH_INVARIANT", raising=False)
    else:
        monkeypatch.setenv("FINLLM_ENGINE_BATCH_INVARIANT", value)
    assert WorkerConfig.from_env().batch_invariant is expected
