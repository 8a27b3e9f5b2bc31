"""A smaller model cut from a larger one: its embeddings, its first `layers` decoder layers, its final
norm and head. The base tier's student (`finllm adapters distill` trains its adapter to answer as the
deep tier does): a 30-layer model's first 8 layers cost about a quarter of its compute per token.

Without training the cut model's next-token distribution means little (its last layer's states were
made to feed the layers it lost); the distilled adapter on its last layer is what makes it answer.
The cut is written like a conversion: a folder with its manifest, which names the parent's fingerprint.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from inference.checkpoints.store import model_fingerprint, read_manifest, write_manifest

TRUNCATION_VERSION = 1


@dataclass(frozen=True, slots=True)
class Truncation:
    """The first `layers` decoder layers of the registered model `parent`."""

    parent: str
    layers: int


def truncate_model(parent_dir: Path, layers: int, staging: Path, manifest_fields: dict) -> None:
    """Write `parent_dir`'s model cut to its first `layers` layers into `staging` (weights in the parent's
    dtype, its tokenizer, a manifest naming the parent's fingerprint)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(parent_dir, local_files_only=True)
    if not 0 < layers < config.num_hidden_layers:
        raise ValueError(f"cannot keep {layers} of {config.num_hidden_layers} layers")
    model = AutoModelForCausalLM.from_pretrained(parent_dir, local_files_only=True, dtype="auto")
    model.model.layers = model.model.layers[:layers]
    model.config.num_hidden_layers = layers
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = model.config.layer_types[:layers]
    model.eval().save_pretrained(staging)
    AutoTokenizer.from_pretrained(parent_dir, local_files_only=True).save_pretrained(staging)
    parent = read_manifest(parent_dir)
    write_manifest(staging, {**manifest_fields, "truncation_version": TRUNCATION_VERSION, "layers": layers,
                             "parent_fingerprint": parent.get("fingerprint") or model_fingerprint(parent_dir),
                             "fingerprint": model_fingerprint(staging)})
