"""The whole engine through the Triton kernels (on CUDA where there is a GPU, else interpreted on CPU)
against its torch path on CPU.

Kernel tests prove each kernel alone; this one proves the wiring: the engine's forward calls the
`inference.kernels` dispatchers, the per-step segment table matches the step's tokens, and chunked
prefill, decode and mixed adapters (ranks 2 and 8, no adapter) give the torch path's logits and tokens.
"""
from __future__ import annotations

import random

import pytest
import torch

pytest.importorskip("triton")

from inference.engine.config import EngineConfig  # noqa: E402
from inference.engine.engine import Engine  # noqa: E402
from inference.engine.sequence import RequestKind, RequestStatus  # noqa: E402
from inference.kernels import FORCE_TRITON_ENV, use_triton  # noqa: E402
from tests.inference.kernels.conftest import DEVICE as KERNEL_DEVICE  # noqa: E402
from tests.inference.tiny_models import build_tiny_adapter, build_tiny_model  # noqa: E402

DEVICE = str(KERNEL_DEVICE)     # the Triton runs: CUDA where there is one, else CPU (interpreted)

ADAPTERS = {"narrow": (2, ("q_proj", "v_proj")),
            "wide": (8, ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"))}
REQUEST_ADAPTERS = [None, "narrow", "wide", "wide", "narrow"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("engine-triton")
    model_dir = build_tiny_model(root / "model", "qwen2", hidden_size=64, num_layers=2, num_heads=4,
                                 num_kv_heads=2, intermediate_size=96, vocab_size=128)
    adapters = {name: build_tiny_adapter(model_dir, root / name, rank, target_modules=targets, seed=i + 1)
                for i, (name, (rank, targets)) in enumerate(ADAPTERS.items())}
    return {"model_dir": model_dir, "adapters": adapters}


def run_engine(checkpoint: dict, device: str) -> tuple[dict, bool]:
    """Score 3 prompts (chunked prefill over 16-token steps) and generate 2 x 3 tokens; 4-slot pages."""
    engine = Engine(checkpoint["model_dir"], EngineConfig(block_size=4, num_blocks=64, max_num_batched_tokens=16),
                    device)
    for name, path in checkpoint["adapters"].items():
        engine.register_adapter(name, path)
    rng = random.Random(0)
    for i, adapter in enumerate(REQUEST_ADAPTERS):
        tokens = [rng.randrange(128) for _ in range(rng.randrange(5, 20))]
        if i < 3:
            engine.add_request(str(i), tokens, RequestKind.SCORE, adapter=adapter, label_token_ids=range(128))
        else:
            engine.add_request(str(i), tokens, RequestKind.GENERATE, adapter=adapter, max_new_tokens=3)
    outputs = {o.request_id: o for o in engine.run_until_done()}
    return outputs, use_triton(engine.model.embed)


def test_engine_through_triton_kernels_matches_torch_path(checkpoint, monkeypatch):
    monkeypatch.setenv(FORCE_TRITON_ENV, "0")
    torch_outputs, torch_used_triton = run_engine(checkpoint, "cpu")
    monkeypatch.setenv(FORCE_TRITON_ENV, "1")
    triton_outputs, triton_used_triton = run_engine(checkpoint, DEVICE)

    assert (torch_used_triton, triton_used_triton) == (False, True)
    assert set(triton_outputs) == set(torch_outputs) == {str(i) for i in range(len(REQUEST_ADAPTERS))}
    for rid, expected in torch_outputs.items():
        got = triton_outputs[rid]
        assert got.status is expected.status is RequestStatus.FINISHED
        if expected.label_logits is not None:
            torch.testing.assert_close(torch.tensor(got.label_logits), torch.tensor(expected.label_logits),
                                       atol=1e-4, rtol=1e-4, msg=lambda m: f"request {rid}: {m}")
        assert got.output_token_ids == expected.output_token_ids, rid


def test_static_decode_through_triton_matches_torch_path(checkpoint, monkeypatch):
    """The CUDA-graph decode forward (run eagerly) through the kernels: device lengths, per-token
    segment table over the static buffers, padded rows; tokens as the torch path's."""
    from tests.inference.engine.test_decode_graphs import checked_runs, generate, make_engine

    plan = [(None, 3), ("narrow", 9), ("wide", 17), ("wide", 6), (None, 12)]
    monkeypatch.setenv(FORCE_TRITON_ENV, "0")
    expected = generate(make_engine(checkpoint, static_decode=False), plan, max_new_tokens=4)
    monkeypatch.setenv(FORCE_TRITON_ENV, "1")
    engine = make_engine(checkpoint, static_decode=True, device=DEVICE)
    seen = checked_runs(engine)
    assert generate(engine, plan, max_new_tokens=4) == expected
    assert 5 in {n for n, _ in seen} and max(d for _, d in seen) <= 1e-5, seen


@pytest.mark.parametrize("head_len", [6, 9])
def test_partial_block_prefix_hit_through_triton_matches_no_caching(checkpoint, monkeypatch, head_len):
    """A warm-up of a head leaves a partial last block (4-token pages); head + tail starts its prefill
    mid-block, so the kernel's first query sits at a position inside a cached block."""
    rng = random.Random(head_len)
    head = [rng.randrange(128) for _ in range(head_len)]
    tokens = head + [rng.randrange(128) for _ in range(7)]

    def score(enable_prefix_caching: bool, device: str):
        engine = Engine(checkpoint["model_dir"], EngineConfig(block_size=4, num_blocks=32,
                                                              enable_prefix_caching=enable_prefix_caching), device)
        engine.register_adapter("wide", checkpoint["adapters"]["wide"])
        engine.add_request("warm", head, RequestKind.SCORE, adapter="wide", label_token_ids=[1])
        engine.run_until_done()
        engine.add_request("full", tokens, RequestKind.SCORE, adapter="wide", label_token_ids=range(128))
        [out] = engine.run_until_done()
        return out

    monkeypatch.setenv(FORCE_TRITON_ENV, "0")
    plain = score(enable_prefix_caching=False, device="cpu")
    monkeypatch.setenv(FORCE_TRITON_ENV, "1")
    cached = score(enable_prefix_caching=True, device=DEVICE)
    assert (cached.num_cached_tokens, plain.num_cached_tokens) == (head_len, 0)
    assert head_len % 4                                                  # mid-block start
    torch.testing.assert_close(torch.tensor(cached.label_logits), torch.tensor(plain.label_logits),
                               atol=1e-4, rtol=1e-4)
