"""Tiny random-weight checkpoints for tests and benchmarks (no downloads).

Builds a Hugging Face Qwen2 or Llama folder from a config, PEFT LoRA folders with
non-zero B, and a small byte-level BPE tokenizer in which " up", " down", " flat" are tokens.
"""
from __future__ import annotations

from pathlib import Path

import torch

WORDS = ("price", "news", "stock", "market", "rose", "fell", "is", "rate", "bond")


def build_tiny_model(out_dir: str | Path, arch: str = "qwen2", hidden_size: int = 64, num_layers: int = 2,
                     num_heads: int = 4, num_kv_heads: int = 2, intermediate_size: int = 128,
                     vocab_size: int = 256, tie_word_embeddings: bool = False, seed: int = 0) -> str:
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    config_cls = {"qwen2": Qwen2Config, "llama": LlamaConfig}[arch]
    extra = {"attention_bias": True} if arch == "llama" else {}
    config = config_cls(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=intermediate_size,
                        num_hidden_layers=num_layers, num_attention_heads=num_heads,
                        num_key_value_heads=num_kv_heads, tie_word_embeddings=tie_word_embeddings,
                        max_position_embeddings=4096, rope_theta=5000.0, **extra)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for param in model.parameters():     # larger than the default init so logits are well separated
            param.normal_(0.0, 0.1) if param.dim() > 1 else param.uniform_(0.5, 1.5)
    model.save_pretrained(out_dir)
    return str(out_dir)


def build_tiny_adapter(model_dir: str | Path, out_dir: str | Path, rank: int, alpha: float | None = None,
                       target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj"),
                       seed: int = 0) -> str:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    torch.manual_seed(seed)
    config = LoraConfig(r=rank, lora_alpha=alpha or 2 * rank, target_modules=list(target_modules),
                        init_lora_weights=False, lora_dropout=0.0)
    get_peft_model(base, config).save_pretrained(out_dir)
    return str(out_dir)


def build_tiny_tokenizer(out_dir: str | Path, vocab_size: int = 300) -> str:
    """Byte-level BPE (what Qwen2Tokenizer expects) trained on a few market sentences."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    corpus = [f"the {a} {b} went {c}" for a in WORDS for b in WORDS for c in ("up", "down", "flat")]
    tokenizer.train_from_iterator(corpus, trainer)
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>").save_pretrained(out_dir)
    return str(out_dir)
