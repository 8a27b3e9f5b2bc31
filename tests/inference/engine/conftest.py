"""Tiny checkpoints shared by the engine tests: one Qwen2 and one Llama, three adapters each.

FINLLM_TEST_DEVICE=cuda runs the parity tests' engines on a GPU (the Triton path) against the same
CPU references; the default is cpu.
"""
import os
from pathlib import Path

import pytest

from tests.inference.tiny_models import build_tiny_adapter, build_tiny_model, build_tiny_tokenizer

ENGINE_DEVICE = os.environ.get("FINLLM_TEST_DEVICE", "cpu")
ADAPTER_SPECS = {  # name -> (rank, target modules); ranks differ, targets differ
    "a": (2, ("q_proj", "v_proj")),
    "b": (4, ("q_proj", "k_proj", "v_proj", "o_proj")),
    "c": (8, ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")),
}


def build_checkpoint(root: Path, arch: str, tie: bool) -> dict:
    model_dir = build_tiny_model(root / "model", arch=arch, tie_word_embeddings=tie, vocab_size=320)
    build_tiny_tokenizer(model_dir)
    adapters = {name: build_tiny_adapter(model_dir, root / name, rank, target_modules=targets, seed=i + 1)
                for i, (name, (rank, targets)) in enumerate(ADAPTER_SPECS.items())}
    return {"model_dir": model_dir, "adapters": adapters}


@pytest.fixture(scope="session")
def tiny_qwen2(tmp_path_factory) -> dict:
    return build_checkpoint(tmp_path_factory.mktemp("qwen2"), "qwen2", tie=False)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> dict:
    return build_checkpoint(tmp_path_factory.mktemp("llama"), "llama", tie=True)


@pytest.fixture(params=["qwen2", "llama"])
def tiny_checkpoint(request) -> dict:
    return request.getfixturevalue(f"tiny_{request.param}")
