"""One request's state as the scheduler sees it. No torch."""
from __future__ import annotations

import enum
import random
from dataclasses import dataclass, field, replace


class RequestKind(enum.Enum):
    SCORE = "score"        # one prefill, then label-token logits at the last prompt position
    GENERATE = "generate"  # decoding (greedy, or sampled: `SamplingParams`) up to max_new_tokens or a stop token


class Priority(enum.IntEnum):
    """Scheduling class, most urgent first: forecasts (deadlines), interactive (HTTP), background (warm-ups)."""

    DEADLINE = 0
    INTERACTIVE = 1
    BACKGROUND = 2


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """How a generate request picks its tokens: temperature 0 is greedy; `seed` makes sampling reproducible
    (None: a random seed drawn when the request is added); `logprobs`: how many top alternatives to report
    with each token's log-probability (None: no log-probabilities)."""

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    logprobs: int | None = None

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.logprobs is not None and self.logprobs < 0:
            raise ValueError(f"logprobs must be >= 0, got {self.logprobs}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def seeded(self) -> "SamplingParams":
        """These parameters with a seed (a random one when none is set and sampling is not greedy)."""
        return self if self.seed is not None or self.greedy else replace(self, seed=random.getrandbits(63))


GREEDY = SamplingParams()
TokenLogprobs = tuple[float, tuple[tuple[int, float], ...]]   # the token's log-probability, the top (id, lp)


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
    sampling: SamplingParams = GREEDY
    priority: Priority = Priority.DEADLINE
    value: float = 0.0                  # within a class, higher value first (a forecast's: inference.tiering)
    status: RequestStatus = RequestStatus.WAITING
    output_token_ids: list[int] = field(default_factory=list)
    output_logprobs: list[TokenLogprobs] = field(default_factory=list)   # one per output token when asked
    num_computed_tokens: int = 0
    num_cached_tokens: int = 0          # prefix-cache hit at the last admission
    num_preemptions: int = 0
    label_logits: tuple[float, ...] | None = None
    first_scheduled_ns: int | None = None
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

    def append_token(self, token_id: int, logprobs: TokenLogprobs | None = None) -> None:
        self.output_token_ids.append(token_id)
        if logprobs is not None:
            self.output_logprobs.append(logprobs)

    def is_generation_done(self) -> bool:
        if not self.output_token_ids:
            return False
        return (len(self.output_token_ids) >= self.max_new_tokens
                or self.output_token_ids[-1] in self.stop_token_ids)
