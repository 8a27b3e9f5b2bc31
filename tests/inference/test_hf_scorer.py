from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from inference.checkpoints import PromptSettings, build_model, model_fingerprint
from inference.scorers.base import ScoreItem, Scorer, label_token_ids
from inference.scorers.hf import BASE_ADAPTER, HFScorer, UnknownAdapterError, left_pad
from schemas import DIRECTIONS

PROMPTS = [
    "shares rose",
    "AAPL: the stock fell 2.31% after earnings. price 187.20 next:",
    "oil futures rallied on supply fears while the index was unchanged; analysts expect",
    "bank",
    "tech profit guidance upgrade " * 12 + "next:",
    "Fed rates steady, bond yields slump 0.12%",
]


@pytest.fixture(scope="module")
def scorer(tiny_model_dir: Path, lora_dirs: dict[str, Path]) -> HFScorer:
    adapters = {name: str(path) for name, path in lora_dirs.items()}
    return HFScorer(str(tiny_model_dir), max_batch=32, adapters=adapters)


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path):
    return AutoTokenizer.from_pretrained(tiny_model_dir, local_files_only=True)


def _items(prompts, adapter=None, deadline_ns=None) -> list[ScoreItem]:
    return [ScoreItem(f"r{i}", p, adapter, deadline_ns) for i, p in enumerate(prompts)]


def _probs(results) -> torch.Tensor:
    return torch.tensor([r.probs for r in results], dtype=torch.float64)


def _full_vocab_label_probs(model, tokenizer, prompt: str) -> torch.Tensor:
    """Reference: softmax over every vocabulary logit, keep label ids, renormalise."""
    label_ids = label_token_ids(tokenizer, PromptSettings().label_words)
    input_ids = torch.tensor([tokenizer.encode(prompt, add_special_tokens=False)])
    with torch.no_grad():
        logits = model(input_ids=input_ids).logits[0, -1]  # [V]
    label_probs = logits.double().softmax(-1)[label_ids]
    return label_probs / label_probs.sum()


def test_is_a_scorer(scorer, tiny_model_dir):
    as_protocol: Scorer = scorer  # checked statically; at run time check the members
    assert callable(as_protocol.score) and callable(as_protocol.close)
    assert scorer.model_name == f"tiny-qwen2@{model_fingerprint(tiny_model_dir)}"


def test_label_token_ids_are_the_label_words(tokenizer):
    ids = label_token_ids(tokenizer, PromptSettings().label_words)
    assert [tokenizer.decode([i]) for i in ids] == [" up", " down", " flat"]


def test_probs_match_full_logits(scorer, tiny_model_dir, tokenizer):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, local_files_only=True).eval()
    for prompt in PROMPTS:
        (result,) = scorer.score([ScoreItem("r", prompt)])
        expected = _full_vocab_label_probs(model, tokenizer, prompt)
        assert result.request_id == "r" and not result.expired
        assert torch.allclose(_probs([result])[0], expected, atol=1e-5, rtol=0)
        assert sum(result.probs) == pytest.approx(1.0, abs=1e-6)


def test_batch_equals_per_item_and_keeps_order(scorer):
    batched = scorer.score(_items(PROMPTS))
    alone = [scorer.score([item])[0] for item in _items(PROMPTS)]
    assert [r.request_id for r in batched] == [f"r{i}" for i in range(len(PROMPTS))]
    assert torch.allclose(_probs(batched), _probs(alone), atol=1e-5, rtol=0)
    assert not torch.allclose(_probs(batched)[0], _probs(batched)[1], atol=1e-4)


def test_sub_batches_equal_one_batch(tiny_model_dir, scorer):
    small = HFScorer(str(tiny_model_dir), max_batch=2)
    many = PROMPTS * 3
    assert torch.allclose(_probs(small.score(_items(many))), _probs(scorer.score(_items(many))), atol=1e-5)


def test_expired_items_are_not_computed(scorer):
    now_ns = time.time_ns()
    items = [
        ScoreItem("past", PROMPTS[0], deadline_ns=now_ns - 1),
        ScoreItem("future", PROMPTS[1], deadline_ns=now_ns + 60 * 10**9),
        ScoreItem("none", PROMPTS[2]),
    ]
    past, future, none = scorer.score(items)
    assert (past.request_id, past.probs, past.expired) == ("past", None, True)
    assert not future.expired and len(future.probs) == len(DIRECTIONS)
    assert not none.expired and none.probs is not None


def test_all_expired_runs_no_forward(scorer):
    results = scorer.score(_items(PROMPTS, deadline_ns=time.time_ns() - 1))
    assert all(r.expired and r.probs is None for r in results)


def test_unknown_adapter_raises_key_error(scorer):
    with pytest.raises(KeyError, match="nope"):
        scorer.score([ScoreItem("r", PROMPTS[0]), ScoreItem("x", PROMPTS[1], adapter="nope")])
    with pytest.raises(UnknownAdapterError):
        scorer.score([ScoreItem("x", PROMPTS[1], adapter="nope")])


def test_registering_a_loaded_name_replaces_it_and_the_base_name_is_reserved(scorer, tiny_model_dir, lora_dirs):
    own = HFScorer(str(tiny_model_dir), adapters={"alpha": str(lora_dirs["alpha"])})
    own.register_adapter("alpha", str(lora_dirs["beta"]))
    assert own.adapter_names == own.resident_adapters == frozenset({"alpha"})
    assert torch.allclose(_probs(own.score(_items(PROMPTS, "alpha"))), _probs(scorer.score(_items(PROMPTS, "beta"))),
                          atol=1e-6)
    with pytest.raises(ValueError, match="reserved"):
        own.register_adapter(BASE_ADAPTER, str(lora_dirs["alpha"]))


def test_removed_adapter_is_refused_and_the_others_are_unchanged(tiny_model_dir, lora_dirs):
    own = HFScorer(str(tiny_model_dir), adapters={n: str(p) for n, p in lora_dirs.items()})
    before = _probs(own.score(_items(PROMPTS, "beta")))
    own.remove_adapter("alpha")
    assert own.adapter_names == frozenset({"beta"})
    with pytest.raises(UnknownAdapterError):
        own.score(_items(PROMPTS[:1], "alpha"))
    assert torch.allclose(_probs(own.score(_items(PROMPTS, "beta"))), before, atol=1e-6)
    own.remove_adapter("beta")
    assert own.adapter_names == frozenset()
    assert own.score(_items(PROMPTS[:1]))[0].probs is not None      # the base model still serves
    with pytest.raises(KeyError):
        own.remove_adapter("beta")
    own.register_adapter("alpha", str(lora_dirs["alpha"]))            # and a name can come back
    assert own.score(_items(PROMPTS[:1], "alpha"))[0].probs is not None


def test_adapters_change_the_answer(scorer):
    base, alpha, beta = (_probs(scorer.score(_items(PROMPTS, a))) for a in (None, "alpha", "beta"))
    assert (base - alpha).abs().max() > 1e-3
    assert (alpha - beta).abs().max() > 1e-3


def test_mixed_adapter_batch_equals_each_adapter_alone(scorer, tiny_model_dir, lora_dirs):
    adapters = [None, "alpha", "beta"]
    mixed_items = [
        ScoreItem(f"r{i}", prompt, adapters[i % 3]) for i, prompt in enumerate(PROMPTS * 2)
    ]
    mixed = scorer.score(mixed_items)
    single = {  # reference scorers that each hold at most one adapter
        name: HFScorer(str(tiny_model_dir), adapters={name: str(lora_dirs[name])} if name else None)
        for name in adapters
    }
    alone = [single[item.adapter].score([item])[0] for item in mixed_items]
    assert torch.allclose(_probs(mixed), _probs(alone), atol=1e-5, rtol=0)


def test_adapter_matches_plain_peft_forward(scorer, tiny_model_dir, lora_dirs, tokenizer):
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, local_files_only=True)
    peft_model = PeftModel.from_pretrained(base, str(lora_dirs["beta"])).eval()
    for prompt in PROMPTS[:3]:
        (result,) = scorer.score([ScoreItem("r", prompt, adapter="beta")])
        expected = _full_vocab_label_probs(peft_model, tokenizer, prompt)
        assert torch.allclose(_probs([result])[0], expected, atol=1e-5, rtol=0)


def test_long_prompt_keeps_its_end(tmp_path, tiny_corpus, tokenizer):
    short_ctx_dir = build_model(tmp_path / "ctx32", tiny_corpus, max_position_embeddings=32)
    short = HFScorer(str(short_ctx_dir))
    long_prompt = " ".join(PROMPTS * 3)
    token_ids = tokenizer.encode(long_prompt, add_special_tokens=False)
    assert len(token_ids) > 32
    (result,) = short.score([ScoreItem("long", long_prompt)])
    expected = short.label_probs([token_ids[-32:]], [None])[0]
    assert torch.allclose(_probs([result])[0], expected.double(), atol=1e-6)


def test_empty_prompt_is_rejected(scorer):
    with pytest.raises(ValueError, match="empty"):
        scorer.score([ScoreItem("r", "")])


def test_left_pad_right_aligns():
    input_ids, attention_mask = left_pad([[5, 6, 7], [9]], pad_id=0)
    assert input_ids.tolist() == [[5, 6, 7], [0, 0, 9]]
    assert attention_mask.tolist() == [[1, 1, 1], [0, 0, 1]]
