"""`Scorer` over our engine: each item becomes a score request over the direction labels."""
from __future__ import annotations

import itertools
import logging
import math
from pathlib import Path
from typing import Sequence

from inference.engine.config import EngineConfig
from inference.engine.engine import Engine, RequestOutput
from inference.engine.sequence import Priority, RequestKind, RequestStatus
from inference.checkpoints import model_fingerprint
from inference.scorers.base import ScoreItem, ScoreResult
from inference.scorers.prompting import PromptFormat

log = logging.getLogger("finllm.engine")


def softmax(logits: Sequence[float]) -> tuple[float, ...]:
    top = max(logits)
    exps = [math.exp(v - top) for v in logits]
    total = sum(exps)
    return tuple(e / total for e in exps)


class EngineScorer:
    """Scores prompts with the paged multi-LoRA engine; `score` blocks until all are answered."""

    def __init__(self, model_dir: str, adapters: dict[str, str] | None = None, device: str = "cpu",
                 config: EngineConfig | None = None) -> None:
        from transformers import AutoTokenizer

        self.model_dir = str(model_dir)
        self.model_name = f"{Path(model_dir).resolve().name}@{model_fingerprint(model_dir)}"   # as HFScorer
        self.engine = Engine(model_dir, config, device)
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        self.prompt_format = PromptFormat.for_model(self.tokenizer, model_dir)
        self.label_token_ids = self.prompt_format.label_ids
        self._ids = itertools.count()
        self._unknown_adapters: set[str] = set()     # logged once each
        self.num_rejected = 0
        for name, path in (adapters or {}).items():
            self.register_adapter(name, path)

    def register_adapter(self, name: str, path: str) -> None:
        """Load a PEFT LoRA folder under `name`; re-registering a name replaces its adapter."""
        self.engine.register_adapter(name, path)

    @property
    def adapter_names(self) -> frozenset[str]:
        return frozenset(self.engine.registry.names)

    @property
    def resident_adapters(self) -> frozenset[str]:
        """The registered adapters now in engine slots."""
        return frozenset(self.engine.slots.resident)

    def remove_adapter(self, name: str) -> None:
        self.engine.remove_adapter(name)

    def score(self, items: Sequence[ScoreItem]) -> list[ScoreResult]:
        """Results in the order of `items`. An item the engine cannot take (an unregistered adapter,
        a prompt longer than the KV pool) is answered as failed: probs None, not expired."""
        submitted = [(item, self.submit(item)) for item in items]
        outputs = self._drain({rid for _, rid in submitted if rid is not None})
        return [self.result(item, outputs[rid] if rid is not None else None) for item, rid in submitted]

    def submit(self, item: ScoreItem) -> str | None:
        """Add the item to the engine and return its engine id; None when refused (logged)."""
        if item.adapter is not None and item.adapter not in self.engine.registry:
            self.num_rejected += 1
            if item.adapter not in self._unknown_adapters:
                self._unknown_adapters.add(item.adapter)
                log.warning("adapter %r is not registered: its requests get no LLM score", item.adapter)
            return None
        rid = f"score-{next(self._ids)}"
        try:
            # a warm-up's prompt is the known head of a coming one: only the tokens that prompt will start with
            self.engine.add_request(rid, self.encode(item.prompt, head=item.background), RequestKind.SCORE,
                                    adapter=item.adapter, deadline_ns=item.deadline_ns,
                                    label_token_ids=self.label_token_ids,
                                    priority=Priority.BACKGROUND if item.background else Priority.DEADLINE,
                                    value=item.value)
        except ValueError as error:
            self.num_rejected += 1
            log.warning("request %s not scored: %s", item.request_id, error)
            return None
        return rid

    def next_token_logits(self, prompt: str, token_ids: Sequence[int]) -> list[float]:
        """The base model's logits of `token_ids` as the token after `prompt` (prepared as `score` does)."""
        rid = f"logits-{next(self._ids)}"
        self.engine.add_request(rid, self.encode(prompt), RequestKind.SCORE, label_token_ids=tuple(token_ids))
        return list(self._drain({rid})[rid].label_logits)

    def encode(self, prompt: str, head: bool = False) -> list[int]:
        """`prompt` as the model reads it: in its prompt format, tokenized (`head`: the start of prompts)."""
        token_ids = (self.prompt_format.encode_head if head else self.prompt_format.encode)(prompt)
        return token_ids or [self.tokenizer.eos_token_id or 0]

    def _drain(self, pending: set[str]) -> dict[str, RequestOutput]:
        outputs: dict[str, RequestOutput] = {}
        while pending:
            for output in self.engine.step():
                outputs[output.request_id] = output
                pending.discard(output.request_id)
        return outputs

    @staticmethod
    def result(item: ScoreItem, output: RequestOutput | None) -> ScoreResult:
        """The answer to `item` from its engine output (None: the engine refused it)."""
        if output is None:
            return ScoreResult(item.request_id, None)
        if output.status is not RequestStatus.FINISHED:
            return ScoreResult(item.request_id, None, expired=output.status is RequestStatus.EXPIRED)
        return ScoreResult(item.request_id, softmax(output.label_logits))

    def metrics(self) -> dict:
        return {**self.engine.metrics(), "rejected_items": self.num_rejected}

    @property
    def prefix_caching(self) -> bool:
        """Whether a prompt's computed prefix blocks are kept for later prompts (warm-ups pay off)."""
        return self.engine.config.enable_prefix_caching

    def close(self) -> None:
        for request in list(self.engine.scheduler.waiting + self.engine.scheduler.running):
            self.engine.abort(request.request_id)
