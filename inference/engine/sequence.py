"""One request's state as the scheduler sees it. No torch."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field


class RequestKind(enum.Enum):
    SCORE = "score"        # one prefill, then label-token logits at the last prompt position
    GENERATE = "generate"  # greedy decoding up to max_new_tokens or a stop token


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"   # answered
    EXPIRED = "expired"     # could no longer meet its deadline
    ABORTED = "aborted"     # cancelled by the caller or its adapter was removed

    @property
    def is_done(self) -> bool:
        return self in (RequestStatus.FINISHED, RequestStatus.EXPIRED, RequestStatus.ABORTED)


@dataclass(slots=True)
class Request:
    """Mutable scheduling state; `token_ids` grows as a generate request decodes.

    The scheduler's one rule: each step lets `num_computed_tokens` catch up with
    `num_tokens` under the step's token budget.
    """

    request_id: str
    prompt_token_ids: list[int]
    kind: RequestKind
    arrival_ns: int
    adapter: str | None = None
    adapter_version: int = 0            # bumps when a name is re-registered: old KV is never reused
    deadline_ns: int | None = None
    label_token_ids: tuple[int, ...] = ()
    max_new_tokens: int = 0
    stop_token_ids: frozenset[int] = frozenset()
    status: RequestStatus = RequestStatus.WAITING
    output_token_ids: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0
    num_cached_tokens: int = 0          # prefix-cache hit at the last admission
    num_preemptions: int = 0
    label_logits: tuple[float, ...] | None = None
    first_token_ns: int | None = None
    finished_ns: int | None = None

    @property
    def token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.output_token_ids

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def max_total_tokens(self) -> int:
        """Upper bound on tokens whose KV this request may ever hold."""
        return self.num_prompt_tokens + max(self.max_new_tokens - 1, 0)

    def append_token(self, token_id: int) -> None:
        self.output_token_ids.append(token_id)

    def is_generation_done(self) -> bool:
        if not self.output_token_ids:
            return False
        return (len(self.output_token_ids) >= self.max_new_tokens
                or self.output_token_ids[-1] in self.stop_token_ids)
