"""The whole engine through the Triton kernels (interpreted on CPU) against its torch path.

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
from inference.engine.tiny_models import build_tiny_adapter, build_tiny_model  # noqa: E402
from inference.kernels import FORCE_TRITON_ENV, use_triton  # noqa: E402

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


def run_engine(checkpoint: dict) -> tuple[dict, bool]:
    """Score 3 prompts (chunked prefill over 16-token steps) and generate 2 x 3 tokens; 4-slot pages."""
    engine = Engine(checkpoint["model_dir"], EngineConfig(block_size=4, num_blocks=64, max_num_batched_tokens=16))
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
    torch_outputs, torch_used_triton = run_engine(checkpoint)
    monkeypatch.setenv(FORCE_TRITON_ENV, "1")
    triton_outputs, triton_used_triton = run_engine(checkpoint)

    assert (torch_used_triton, triton_used_triton) == (False, True)
    assert set(triton_outputs) == set(torch_outputs) == {str(i) for i in range(len(REQUEST_ADAPTERS))}
    for rid, expected in torch_outputs.items():
        got = triton_outputs[rid]
        assert got.status is expected.status is RequestStatus.FINISHED
        if expected.label_logits is not None:
            torch.testing.assert_close(torch.tensor(got.label_logits), torch.tensor(expected.label_logits),
                                       atol=1e-4, rtol=1e-4, msg=lambda m: f"request {rid}: {m}")
        assert got.output_token_ids == expected.output_token_ids, rid
