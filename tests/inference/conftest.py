"""Fixtures for inference tests: a tiny Qwen2 built once per session, and two LoRA adapters."""
from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from inference.checkpoints import build_model

_WORDS = (
    "stock shares rose fell market price earnings revenue guidance bank oil tech futures "
    "index rally slump steady unchanged analyst quarter profit loss upgrade downgrade Fed rates"
).split()


def make_corpus(num_texts: int = 300, seed: int = 0) -> list[str]:
    """Small deterministic news-like corpus; it contains no label words on purpose."""
    rng = random.Random(seed)
    return [
        " ".join(rng.choice(_WORDS) for _ in range(16)) + f" {rng.uniform(0, 999):.2f}%"
        for _ in range(num_texts)
    ]


@pytest.fixture(scope="session")
def tiny_corpus() -> list[str]:
    return make_corpus()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_corpus: list[str]) -> Path:
    """A built tiny-qwen2 folder, loadable with from_pretrained(local_files_only=True)."""
    return build_model(tmp_path_factory.mktemp("models") / "tiny-qwen2", tiny_corpus, seed=0)


def _save_lora(model_dir: Path, out_dir: Path, seed: int) -> Path:
    base = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True)
    config = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=["q_proj", "v_proj", "down_proj"],
        init_lora_weights=False,  # random A and B, so the adapter changes the outputs
    )
    torch.manual_seed(seed)
    get_peft_model(base, config).save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="session")
def lora_dirs(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> dict[str, Path]:
    """Two distinct LoRA adapters for the tiny model: {"alpha": path, "beta": path}."""
    root = tmp_path_factory.mktemp("adapters")
    return {
        "alpha": _save_lora(tiny_model_dir, root / "alpha", seed=1),
        "beta": _save_lora(tiny_model_dir, root / "beta", seed=2),
    }
