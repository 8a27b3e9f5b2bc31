"""A LoRA adapter merged into its base model: a plain Hugging Face checkpoint for standalone use.

Every adapted projection becomes `W + (alpha / r) * B @ A` (PEFT's `merge_and_unload`), so transformers and our
engine load the folder with no adapter and compute what the base with the adapter computes. The folder gets
the base's tokenizer, its prompt settings and a manifest naming the base and the adapter it came from.
"""
from __future__ import annotations

import os
from pathlib import Path

from inference.adapters.cards import read_card
from inference.checkpoints import model_fingerprint, read_manifest
from inference.checkpoints.store import has_manifest, write_into, write_manifest


class MergeError(ValueError):
    """The adapter does not belong to this base, or the output folder is taken."""


def merge_adapter(base_dir: str | os.PathLike, adapter_dir: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Write the merged checkpoint into `out_dir` (which must not exist yet); returns its path."""
    base, adapter, out = Path(base_dir), Path(adapter_dir), Path(out_dir).resolve()
    if out.exists() and any(out.iterdir()):
        raise MergeError(f"{out} exists and is not empty")
    base_hash, trained_on = model_fingerprint(base), read_card(adapter).get("base_model_hash")
    if trained_on and trained_on != base_hash:
        raise MergeError(f"adapter {adapter} was trained on base {trained_on}, not on {base} ({base_hash})")
    return write_into(out, lambda staging: _write_merged(base, adapter, staging, base_hash))


def _write_merged(base: Path, adapter: Path, staging: Path, base_hash: str) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base, local_files_only=True, dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, adapter, local_files_only=True).merge_and_unload()
    merged.save_pretrained(staging)
    AutoTokenizer.from_pretrained(base, local_files_only=True).save_pretrained(staging)
    prompt = read_manifest(base).get("prompt") if has_manifest(base) else None
    write_manifest(staging, {"merged_from": {"base": str(base.resolve()), "base_fingerprint": base_hash,
                                             "adapter": str(adapter.resolve())},
                             **({"prompt": prompt} if prompt else {}),
                             "fingerprint": model_fingerprint(staging)})
