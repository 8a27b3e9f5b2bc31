"""The worker's view of a language model: score prompts over the direction labels.

Every backend (plain transformers in `inference.scorers.hf`, our paged multi-LoRA engine in
`inference.scorers.engine`) implements `Scorer`, so the Kafka-facing worker never knows which
one runs. Imports nothing of ours and no Kafka.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

LABELS: tuple[str, ...] = ("up", "down", "flat")


@dataclass(frozen=True, slots=True)
class ScoreItem:
    """One prompt to score; `deadline_ns` is wall-clock (time.time_ns()) or None for no deadline."""

    request_id: str
    prompt: str
    adapter: str | None = None
    deadline_ns: int | None = None


@dataclass(frozen=True, slots=True)
class ScoreResult:
    """`probs` is aligned with LABELS and sums to 1; None when the request expired before it ran."""

    request_id: str
    probs: tuple[float, ...] | None
    expired: bool = False


class Scorer(Protocol):
    model_name: str

    def score(self, items: Sequence[ScoreItem]) -> list[ScoreResult]:
        """Score a batch; results come back in the order of `items`."""
        ...

    def close(self) -> None: ...
