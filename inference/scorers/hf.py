"""The plain-transformers `Scorer`: one padded forward per sub-batch, label rows only.

A prompt's answer is the next-token distribution at its last position, restricted to
the first token of each " <label>" and renormalised. Only those rows of the output
head are computed (`hidden @ W[label_ids].T`), never the full vocabulary. LoRA
adapters come from PEFT; a batch may mix adapters (and the bare base model) through
PEFT's per-row `adapter_names`.
"""
from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import ContextManager, Sequence

import torch
from peft import PeftConfig, PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from inference.checkpoints import model_fingerprint
from inference.scorers.base import ScoreItem, ScoreResult
from inference.scorers.prompting import PromptFormat

log = logging.getLogger(__name__)

BASE_ADAPTER = "__base__"  # PEFT's name for "no adapter" in a mixed batch


class UnknownAdapterError(KeyError):
    """An item names an adapter this scorer has not loaded."""


def left_pad(token_lists: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-align sequences: returns input_ids and attention_mask, both [B, T_max]."""
    max_len = max(len(ids) for ids in token_lists)
    input_ids = torch.full((len(token_lists), max_len), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(token_lists), max_len), dtype=torch.long)
    for row, ids in enumerate(token_lists):
        if ids:
            input_ids[row, -len(ids) :] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, -len(ids) :] = 1
    return input_ids, attention_mask


def _is_expired(item: ScoreItem, now_ns: int) -> bool:
    return item.deadline_ns is not None and item.deadline_ns <= now_ns


class HFScorer:
    """Scores prompts with a Hugging Face causal LM (optionally with LoRA adapters)."""

    def __init__(
        self,
        model_dir: str,
        *,
        device: str = "cpu",
        dtype: torch.dtype = torch.float32,
        max_batch: int = 32,
        adapters: dict[str, str] | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self._device = torch.device(device)
        self._max_batch = max_batch
        self._tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        self._model = self._load_model(model_dir, dtype)
        self._max_prompt_tokens = self._model.config.max_position_embeddings
        self._pad_id = _pad_token_id(self._tokenizer)
        self._prompt_format = PromptFormat.for_model(self._tokenizer, model_dir)
        self._label_head = self._label_rows(self._prompt_format.label_ids)  # [L, H]
        self._adapter_names: set[str] = set()
        self.model_name = f"{Path(model_dir).resolve().name}@{model_fingerprint(model_dir)}"
        for name, path in (adapters or {}).items():
            self.register_adapter(name, path)

    def _load_model(self, model_dir: str, dtype: torch.dtype) -> torch.nn.Module:
        model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True, dtype=dtype)
        return model.to(self._device).eval()

    def _label_rows(self, label_ids: list[int]) -> torch.Tensor:
        head_weight = self._model.get_output_embeddings().weight  # [V, H]
        return head_weight[label_ids].detach().float().clone()  # [L, H]

    # ------------------------------------------------------------ adapters

    @property
    def adapter_names(self) -> frozenset[str]:
        return frozenset(self._adapter_names)

    @property
    def resident_adapters(self) -> frozenset[str]:
        """Every loaded adapter sits on the model's device."""
        return self.adapter_names

    def register_adapter(self, name: str, path: str) -> None:
        """Load a PEFT LoRA adapter saved at `path` under `name`; one loaded under that name is unloaded first."""
        if name == BASE_ADAPTER:
            raise ValueError(f"adapter name {name!r} is reserved")
        if name in self._adapter_names:
            self.remove_adapter(name)   # PEFT cannot replace an adapter in place
        _reject_head_adapters(path)
        if isinstance(self._model, PeftModel):
            self._model.load_adapter(path, adapter_name=name)
            if not self._adapter_names:   # every earlier adapter was removed: PEFT still names one active
                self._model.set_adapter(name)
        else:
            self._model = PeftModel.from_pretrained(self._model, path, adapter_name=name)
        self._model.eval()
        self._adapter_names.add(name)

    def remove_adapter(self, name: str) -> None:
        """Unload `name`; its later requests fail like any unknown adapter's. KeyError if not loaded."""
        if name not in self._adapter_names:
            raise KeyError(f"adapter {name!r} is not loaded; loaded: {sorted(self._adapter_names)}")
        self._model.delete_adapter(name)
        self._adapter_names.discard(name)

    def _check_adapters(self, items: Sequence[ScoreItem]) -> None:
        for item in items:
            if item.adapter is not None and item.adapter not in self._adapter_names:
                raise UnknownAdapterError(
                    f"request {item.request_id!r} names adapter {item.adapter!r}; "
                    f"loaded: {sorted(self._adapter_names)}"
                )

    def _adapter_scope(self, adapters: Sequence[str | None]) -> ContextManager:
        """Route each row through its adapter (PEFT's mixed-batch forward hooks)."""
        if not isinstance(self._model, PeftModel) or not self._adapter_names:
            return contextlib.nullcontext()   # no adapter left (all removed): the base model as it is
        # PEFT exposes mixed batches on forward()/generate(); we call the decoder without
        # the full-vocabulary head, so we enter the same hook scope forward() uses.
        row_names = [name or BASE_ADAPTER for name in adapters]
        return self._model._enable_peft_forward_hooks(adapter_names=row_names)

    def _decoder(self) -> torch.nn.Module:
        # LoRA wraps the causal LM in place (base_model.model); get_base_model() would also look up the
        # active adapter's config, which is gone once every adapter was removed
        causal_lm = self._model.base_model.model if isinstance(self._model, PeftModel) else self._model
        return causal_lm.model

    # ------------------------------------------------------------ scoring

    def score(self, items: Sequence[ScoreItem]) -> list[ScoreResult]:
        self._check_adapters(items)
        results: dict[int, ScoreResult] = {}
        live = self._drop_expired(items, range(len(items)), results)
        token_lists = {index: self._encode(items[index]) for index in live}
        by_length = sorted(live, key=lambda index: len(token_lists[index]))
        for start in range(0, len(by_length), self._max_batch):
            chunk = self._drop_expired(items, by_length[start : start + self._max_batch], results)
            if chunk:
                self._score_chunk(items, chunk, token_lists, results)
        return [results[index] for index in range(len(items))]

    def _drop_expired(
        self, items: Sequence[ScoreItem], indices: Sequence[int], results: dict[int, ScoreResult]
    ) -> list[int]:
        """Record expired items as such and return the indices still worth computing."""
        now_ns = time.time_ns()
        live = []
        for index in indices:
            if _is_expired(items[index], now_ns):
                results[index] = ScoreResult(items[index].request_id, None, expired=True)
            else:
                live.append(index)
        return live

    def _score_chunk(
        self,
        items: Sequence[ScoreItem],
        chunk: list[int],
        token_lists: dict[int, list[int]],
        results: dict[int, ScoreResult],
    ) -> None:
        probs = self.label_probs([token_lists[i] for i in chunk], [items[i].adapter for i in chunk])
        for row, index in enumerate(chunk):
            results[index] = ScoreResult(items[index].request_id, tuple(probs[row].tolist()))

    def _encode(self, item: ScoreItem) -> list[int]:
        token_ids = self._prompt_format.encode(item.prompt)
        if not token_ids:
            raise ValueError(f"request {item.request_id!r} has an empty prompt")
        if len(token_ids) > self._max_prompt_tokens:
            log.debug(
                "request %s: prompt of %d tokens cut from the left to %d",
                item.request_id, len(token_ids), self._max_prompt_tokens,
            )
            token_ids = token_ids[-self._max_prompt_tokens :]
        return token_ids

    def label_probs(
        self, token_lists: Sequence[Sequence[int]], adapters: Sequence[str | None]
    ) -> torch.Tensor:
        """One forward over a left-padded batch; returns label probabilities [B, L] (float32)."""
        input_ids, attention_mask = left_pad(token_lists, self._pad_id)  # [B, T]
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # [B, T]
        with torch.inference_mode(), self._adapter_scope(adapters):
            hidden = self._decoder()(
                input_ids=input_ids.to(self._device),
                attention_mask=attention_mask.to(self._device),
                position_ids=position_ids.to(self._device),
                use_cache=False,
            ).last_hidden_state  # [B, T, H]
            last_hidden = hidden[:, -1, :].float()  # [B, H]
            label_logits = last_hidden @ self._label_head.T  # [B, L]
            return label_logits.softmax(dim=-1).cpu()

    @property
    def prefix_caching(self) -> bool:
        """Every forward runs the whole prompt: nothing is kept between batches."""
        return False

    def metrics(self) -> dict:
        """This backend keeps no counters."""
        return {}

    def close(self) -> None:
        """Drop the model; the scorer is unusable afterwards."""
        self._model = None
        self._label_head = None
        if self._device.type == "cuda":
            torch.cuda.empty_cache()


def _pad_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """Pad rows are masked out, so any id works; prefer pad, then eos."""
    for token_id in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return token_id
    raise ValueError("tokenizer has neither a pad nor an eos token")


def _reject_head_adapters(path: str) -> None:
    """Adapters that change the output head would be ignored by our label-row head."""
    config = PeftConfig.from_pretrained(path)
    touched = set(_as_names(getattr(config, "target_modules", None)))
    touched |= set(_as_names(getattr(config, "modules_to_save", None)))
    if any(name.split(".")[-1] in {"lm_head", "embed_tokens"} for name in touched):
        raise ValueError(f"adapter at {path} modifies the output head or embeddings; unsupported")


def _as_names(modules: object) -> list[str]:
    if modules is None or isinstance(modules, str):
        return []  # a regex target string cannot be inspected here; PEFT resolves it
    return list(modules)
