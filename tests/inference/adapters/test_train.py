"""LoRA training on the CPU: the last-layer fast path equals the full forward, it learns, it saves
adapters both scorers load, and cards carry the base model hash."""
from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from inference.adapters.train import (
    LabelHeadTrainer,
    TrainConfig,
    base_card,
    class_weights,
    read_card,
    train_adapter,
    write_card,
)
from inference.scorers.hf import HFScorer
from inference.checkpoints import model_fingerprint
from inference.scorers.base import ScoreItem

WORDS = {"up": ("rally", "surge", "beat"), "down": ("slump", "miss", "probe"), "flat": ("meeting", "filing", "panel")}


def toy_examples(count: int, seed: int) -> tuple[list[str], list[str]]:
    """Prompts whose label is given by one keyword among filler, like headlines in the real prompts."""
    rng = random.Random(seed)
    prompts, labels = [], []
    for _ in range(count):
        label = rng.choice(list(WORDS))
        filler = " ".join(rng.choice(("stock", "shares", "market", "price", "index")) for _ in range(6))
        prompts.append(f"News: {filler} {rng.choice(WORDS[label])} {filler}.\nDirection (up, down or flat):")
        labels.append(label)
    return prompts, labels


def test_class_weights_balance_the_labels():
    weights = class_weights(["up"] * 6 + ["down"] * 3 + ["flat"] * 3)
    assert weights.tolist() == pytest.approx([0.6, 1.2, 1.2])
    assert class_weights(["up", "down"])[2] == 0.0


def test_fast_last_layer_path_equals_the_full_forward(tiny_model_dir, tmp_path):
    prompts, labels = toy_examples(24, seed=1)
    trainer = LabelHeadTrainer(tiny_model_dir, TrainConfig(rank=4, max_steps=3, learning_rate=1e-2, batch_size=8))
    inputs = trainer.cache_inputs(prompts)
    trainer.fit(inputs, labels)
    fast = torch.tensor(trainer.predict(inputs))                                        # [N, L]
    trainer.save(tmp_path / "adapter")
    scorer = HFScorer(str(tiny_model_dir), adapters={"toy": str(tmp_path / "adapter")})
    full = torch.tensor([r.probs for r in scorer.score([ScoreItem(str(i), p, "toy") for i, p in enumerate(prompts)])])
    assert (fast - full).abs().max() < 1e-3           # float16 storage of the saved weights
    base = torch.tensor([r.probs for r in scorer.score([ScoreItem("b", prompts[0])])])
    assert (base - full[:1]).abs().max() > 1e-4       # the adapter changed the answer


def test_it_learns_a_keyword_to_label_mapping(tiny_model_dir):
    prompts, labels = toy_examples(192, seed=2)
    held_prompts, held_labels = toy_examples(60, seed=3)
    trainer = LabelHeadTrainer(tiny_model_dir, TrainConfig(rank=8, epochs=8, learning_rate=5e-3, batch_size=16))
    stats = trainer.fit(trainer.cache_inputs(prompts), labels)
    probs = trainer.predict(trainer.cache_inputs(held_prompts))
    hits = sum(("up", "down", "flat")[max(range(3), key=p.__getitem__)] == y for p, y in zip(probs, held_labels))
    assert stats.last_loss < stats.first_loss * 0.6
    assert hits / len(held_labels) > 0.8


def test_saved_adapter_is_small_peft_and_loads_in_the_engine(tiny_model_dir, tmp_path):
    from inference.scorers.engine import EngineScorer

    prompts, labels = toy_examples(16, seed=4)
    trainer, stats = train_adapter(tiny_model_dir, prompts, labels, tmp_path / "a",
                                   TrainConfig(rank=4, max_steps=2, learning_rate=1e-2))
    files = {p.name for p in (tmp_path / "a").iterdir()}
    assert files == {"adapter_config.json", "adapter_model.safetensors"}
    tensors = load_file(str(tmp_path / "a" / "adapter_model.safetensors"))
    assert {t.dtype for t in tensors.values()} == {torch.float16}
    assert all(".layers.1." in k for k in tensors)                 # the last layer only
    config = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["layers_to_transform"] == [1]
    engine = EngineScorer(str(tiny_model_dir), adapters={"a": str(tmp_path / "a")})
    hf = HFScorer(str(tiny_model_dir), adapters={"a": str(tmp_path / "a")})
    items = [ScoreItem(str(i), p, "a") for i, p in enumerate(prompts[:4])]
    for got, want in zip(engine.score(items), hf.score(items)):
        assert got.probs == pytest.approx(want.probs, abs=1e-4)


def test_training_can_start_from_a_saved_adapter(tiny_model_dir, tmp_path):
    prompts, labels = toy_examples(16, seed=5)
    first, _ = train_adapter(tiny_model_dir, prompts, labels, tmp_path / "first",
                             TrainConfig(rank=4, max_steps=3, learning_rate=1e-2))
    resumed = LabelHeadTrainer(tiny_model_dir, TrainConfig(rank=4), init_from=tmp_path / "first")
    inputs = resumed.cache_inputs(prompts[:4])
    assert torch.tensor(resumed.predict(inputs)) == pytest.approx(torch.tensor(first.predict(inputs)), abs=1e-3)
    trainable = [p for p in resumed.model.parameters() if p.requires_grad]
    assert trainable and all("lora" in n for n, p in resumed.model.named_parameters() if p.requires_grad)


def test_card_names_the_base_model_hash(tiny_model_dir, tmp_path):
    prompts, labels = toy_examples(8, seed=6)
    _, stats = train_adapter(tiny_model_dir, prompts, labels, tmp_path / "c", TrainConfig(rank=2, max_steps=1))
    write_card(tmp_path / "c", base_card(tiny_model_dir, TrainConfig(rank=2), stats) | {"task": "direction"})
    card = read_card(tmp_path / "c")
    assert card["base_model_hash"] == model_fingerprint(tiny_model_dir) and card["rank"] == 2
    assert card["training"]["steps"] == 1 and read_card(tmp_path) == {}


def test_bad_inputs_are_refused(tiny_model_dir, tmp_path):
    with pytest.raises(ValueError, match="labels"):
        train_adapter(tiny_model_dir, ["a"], ["sideways"], tmp_path / "x")
    with pytest.raises(ValueError):
        TrainConfig(rank=0)


def test_fit_soft_moves_the_student_toward_the_teacher(tiny_model_dir):
    trainer = LabelHeadTrainer(tiny_model_dir, TrainConfig(rank=4, alpha=8.0, epochs=30, batch_size=4,
                                                           learning_rate=5e-3))
    inputs = trainer.cache_inputs([f"ACME news item {i} (up, down or flat):" for i in range(8)])
    teacher = torch.tensor([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1]] * 4)
    before = np.asarray(trainer.predict(inputs))
    stats = trainer.fit_soft(inputs, teacher)
    after = np.asarray(trainer.predict(inputs))
    gap = lambda probs: float(np.abs(probs - teacher.numpy()).sum(1).mean())
    assert gap(after) < gap(before) / 2 and stats.last_loss < stats.first_loss
