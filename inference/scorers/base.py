"""The worker's view of a language model: score prompts over the direction labels.

Every backend (plain transformers in `inference.scorers.hf`, our paged multi-LoRA engine in
`inference.scorers.engine`) implements `Scorer`, so the Kafka-facing worker never knows which
one runs. Imports only `schemas` of ours, and no Kafka.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

from schemas import DIRECTIONS


@dataclass(frozen=True, slots=True)
class ScoreItem:
    """One prompt to score; `deadline_ns` is wall-clock (time.time_ns()) or None for no deadline;
    `background`: a warm-up, scheduled after forecasts and interactive requests (engines that schedule), whose
    `prompt` is the known head of a coming prompt (prefilled as that prompt will start, for the prefix cache);
    `value`: what the answer is worth (inference.tiering), higher served first under load (engines that schedule)."""

    request_id: str
    prompt: str
    adapter: str | None = None
    deadline_ns: int | None = None
    background: bool = False
    value: float = 0.0


@dataclass(frozen=True, slots=True)
class ScoreResult:
    """`probs` is aligned with `schemas.DIRECTIONS` and sums to 1; None when the request expired before it ran."""

    request_id: str
    probs: tuple[float, ...] | None
    expired: bool = False


class Scorer(Protocol):
    model_name: str

    def score(self, items: Sequence[ScoreItem]) -> list[ScoreResult]:
        """Score a batch; results come back in the order of `items`."""
        ...

    def register_adapter(self, name: str, path: str) -> None:
        """Load the LoRA adapter saved at `path` under `name`, replacing one loaded under that name."""
        ...

    def remove_adapter(self, name: str) -> None:
        """Unload `name`; its later requests fail like any unknown adapter's. KeyError if not loaded."""
        ...

    @property
    def adapter_names(self) -> frozenset[str]:
        """The adapters registered with the scorer."""
        ...

    @property
    def resident_adapters(self) -> frozenset[str]:
        """The registered adapters whose weights sit on the device now."""
        ...

    @property
    def prefix_caching(self) -> bool:
        """Whether a prompt's computed prefix is kept for later prompts (warm-ups pay off)."""
        ...

    def metrics(self) -> dict:
        """Counters and gauges of the backend (empty where it keeps none)."""
        ...

    def close(self) -> None: ...


def label_token_ids(tokenizer, words: Sequence[str]) -> list[int]:
    """The first token id of each label word (aligned with `schemas.DIRECTIONS`, e.g. " up", " down",
    " flat": `inference.scorers.prompting` has each model's); they must be distinct."""
    if len(words) != len(DIRECTIONS):
        raise ValueError(f"label words {list(words)} do not match the labels {list(DIRECTIONS)}")
    ids = [tokenizer.encode(word, add_special_tokens=False)[0] for word in words]
    if len(set(ids)) != len(ids):
        raise ValueError(f"label words {list(words)} share first tokens {ids}")
    return ids
