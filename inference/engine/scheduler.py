"""Continuous batching under one token budget per step, earliest deadline first. No torch.

The one rule: each request has `num_computed_tokens` and `num_tokens`; every step the
scheduler lets the first catch up with the second as far as the budget allows. A long
prompt is thus prefilled in chunks, a prefix-cache hit simply starts with some tokens
computed, and a decode is a step of one token. Running requests go first; when blocks
run out the least urgent running request is preempted (its KV dropped, recomputed later).
Requests are ordered by class first (`Priority`: forecasts, then interactive HTTP, then
warm-ups), and a batch full of a less urgent class gives up seats, and the KV blocks a more
urgent waiting request needs, to it; a step computes few tokens of less urgent requests (a forecast
that arrives waits for the step), and while forecasts are in the engine the others only decode
(`StepBudget`).
Within a class, waiting requests are admitted by value (`Request.value`, in [0, 1]: what a forecast's
language-model answer is worth, in VALUE_BANDS bands, so that near values do not override deadlines),
higher first, then earliest-deadline-first; under load the least valuable requests are the ones that
wait and expire. One waiting longer than `starvation_timeout_s` goes ahead of all others of its class. A
request whose deadline can no longer be met is answered as expired.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from inference.engine.block_manager import BlockManager, CachedPrefix
from inference.engine.config import EngineConfig
from inference.engine.sequence import Priority, Request, RequestKind, RequestStatus, TokenLogprobs

VALUE_BANDS = 4      # values in [0, 1] rank in bands of 1/4: within a band, deadlines decide


@dataclass(slots=True)
class ScheduledChunk:
    """Compute tokens [start, start + num_new_tokens) of `request` this step."""

    request: Request
    start: int
    num_new_tokens: int

    @property
    def completes_sequence(self) -> bool:
        """True when this chunk reaches the last known token, so its output is sampled."""
        return self.start + self.num_new_tokens == self.request.num_tokens


@dataclass(slots=True)
class SchedulerOutput:
    chunks: list[ScheduledChunk] = field(default_factory=list)
    preempted: list[Request] = field(default_factory=list)
    expired: list[Request] = field(default_factory=list)

    @property
    def num_batched_tokens(self) -> int:
        return sum(c.num_new_tokens for c in self.chunks)

    @property
    def adapters(self) -> set[str]:
        return {c.request.adapter for c in self.chunks if c.request.adapter is not None}


@dataclass(frozen=True, slots=True)
class StepResult:
    """What the model produced for one request whose chunk completed its sequence."""

    request_id: str
    next_token_id: int | None = None
    label_logits: tuple[float, ...] | None = None
    logprobs: TokenLogprobs | None = None


@dataclass(slots=True)
class StepBudget:
    """The tokens one step may still compute: in all, and of less urgent requests (HTTP, warm-ups).

    A forecast that arrives while a step runs waits for it, so less urgent requests compute at most
    `yielding` tokens a step (a short step); and while forecasts are in the engine the others only
    decode, one token each (their prefills would make the forecasts' step as long as a prefill of them
    all: on the CPU a step's cost grows with its rows)."""

    total: int
    yielding: int
    forecasts: bool

    def grant(self, request: Request, remaining: int) -> int:
        """How many of its `remaining` tokens `request` computes this step (0: none)."""
        if request.priority is Priority.DEADLINE:
            return min(remaining, self.total)
        if self.forecasts and remaining > 1:
            return 0
        return min(remaining, self.total, self.yielding)

    def spend(self, request: Request, num_tokens: int) -> None:
        self.total -= num_tokens
        if request.priority is not Priority.DEADLINE:
            self.yielding -= num_tokens


class Scheduler:
    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.block_manager = BlockManager(config.num_blocks, config.block_size, config.enable_prefix_caching)
        self.waiting: list[Request] = []
        self.running: list[Request] = []
        self.num_preemptions = 0
        self.num_expired = 0

    def add(self, request: Request) -> None:
        request.status = RequestStatus.WAITING
        self.waiting.append(request)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def priority(self, request: Request, now_ns: int) -> tuple:
        """Smaller is more urgent: by class, then starved requests by arrival, then by value band (higher
        first), then by deadline."""
        waited_s = (now_ns - request.arrival_ns) / 1e9
        if waited_s > self.config.starvation_timeout_s:
            return (request.priority, 0, request.arrival_ns, 0)
        deadline = math.inf if request.deadline_ns is None else request.deadline_ns
        band = min(int(request.value * VALUE_BANDS), VALUE_BANDS - 1)
        return (request.priority, 1, -band, deadline, request.arrival_ns)

    def schedule(self, now_ns: int, step_time_ns: int = 0) -> SchedulerOutput:
        out = SchedulerOutput()
        self._expire(now_ns, step_time_ns, out)
        yielded = self._yield_seats(now_ns, out) + self._yield_blocks(now_ns, out)
        budget = StepBudget(self.config.max_num_batched_tokens, self.config.max_yielding_batched_tokens,
                            forecasts=any(r.priority is Priority.DEADLINE for r in self.running + self.waiting))
        self._schedule_running(now_ns, out, budget)
        if len(out.preempted) == yielded:     # no request was preempted for want of blocks
            self._admit_waiting(now_ns, out, budget)
        return out

    def _yield_seats(self, now_ns: int, out: SchedulerOutput) -> int:
        """When the batch is full, waiting requests of a more urgent class take the seats of running ones
        of a less urgent class (preempted): a forecast never waits for a batch of chats to finish."""
        free, yielded = self.config.max_num_seqs - len(self.running), 0
        for request in sorted(self.waiting, key=lambda r: self.priority(r, now_ns)):
            if free > 0:
                free -= 1
                continue
            if not self._preempt_less_urgent(request, now_ns, out):
                break
            yielded += 1
        return yielded

    def _yield_blocks(self, now_ns: int, out: SchedulerOutput) -> int:
        """When KV blocks run out, the most urgent waiting request takes those of running requests of a less
        urgent class (preempted, least urgent first): chats holding the cache cannot starve a forecast."""
        waiting = min(self.waiting, key=lambda r: self.priority(r, now_ns), default=None)
        if waiting is None:
            return 0
        cached = self.block_manager.find_cached_prefix(waiting)
        num_new = min(waiting.num_tokens - cached.num_tokens, self.config.max_num_batched_tokens)
        yielded = 0
        while not self.block_manager.can_allocate(waiting, num_new, cached):
            if not self._preempt_less_urgent(waiting, now_ns, out):
                break
            yielded += 1
        return yielded

    def _preempt_less_urgent(self, request: Request, now_ns: int, out: SchedulerOutput) -> bool:
        """Preempt the least urgent running request if its class is less urgent than `request`'s."""
        victim = max(self.running, key=lambda r: self.priority(r, now_ns), default=None)
        if victim is None or victim.priority <= request.priority:
            return False
        self._preempt(victim, out)
        return True

    def _expire(self, now_ns: int, step_time_ns: int, out: SchedulerOutput) -> None:
        for request in list(self.waiting):
            if self._cannot_meet_deadline(request, now_ns, step_time_ns):
                self.waiting.remove(request)
                self._finish(request, RequestStatus.EXPIRED, now_ns)
                out.expired.append(request)
        for request in list(self.running):
            if request.deadline_ns is not None and request.deadline_ns < now_ns:
                self.running.remove(request)
                self._finish(request, RequestStatus.EXPIRED, now_ns)
                out.expired.append(request)

    def _cannot_meet_deadline(self, request: Request, now_ns: int, step_time_ns: int) -> bool:
        if request.deadline_ns is None:
            return False
        remaining = request.num_tokens - request.num_computed_tokens
        min_steps = -(-remaining // self.config.max_num_batched_tokens)
        return now_ns + min_steps * step_time_ns > request.deadline_ns

    def _schedule_running(self, now_ns: int, out: SchedulerOutput, budget: StepBudget) -> None:
        scheduled: set[str] = set()
        for request in sorted(self.running, key=lambda r: self.priority(r, now_ns)):
            num_new = budget.grant(request, request.num_tokens - request.num_computed_tokens)
            if num_new == 0 or request.status is not RequestStatus.RUNNING:
                continue
            if not self._make_room(request, num_new, now_ns, scheduled, out):
                continue
            self.block_manager.allocate(request, num_new)
            out.chunks.append(ScheduledChunk(request, request.num_computed_tokens, num_new))
            scheduled.add(request.request_id)
            budget.spend(request, num_new)

    def _make_room(self, request: Request, num_new: int, now_ns: int,
                   scheduled: set[str], out: SchedulerOutput) -> bool:
        """Preempt the least urgent unscheduled running requests until `request` fits."""
        while not self.block_manager.can_allocate(request, num_new):
            candidates = [r for r in self.running if r.request_id not in scheduled]
            victim = max(candidates, key=lambda r: self.priority(r, now_ns))
            self._preempt(victim, out)
            if victim is request:
                return False
        return True

    def _preempt(self, request: Request, out: SchedulerOutput) -> None:
        self.running.remove(request)
        self.block_manager.free(request)
        request.num_computed_tokens = 0
        request.num_preemptions += 1
        request.status = RequestStatus.WAITING
        self.waiting.append(request)
        self.num_preemptions += 1
        out.preempted.append(request)

    def _admit_waiting(self, now_ns: int, out: SchedulerOutput, budget: StepBudget) -> None:
        adapters = {r.adapter for r in self.running if r.adapter is not None}
        for request in sorted(self.waiting, key=lambda r: self.priority(r, now_ns)):
            if len(self.running) >= self.config.max_num_seqs:
                return
            if not self._adapter_fits(request, adapters):
                continue
            cached = self.block_manager.find_cached_prefix(request)
            num_new = budget.grant(request, request.num_tokens - cached.num_tokens)
            if num_new == 0 or not self.block_manager.can_allocate(request, num_new, cached):
                return                        # sorted by class: every later one gets no more
            self._admit(request, cached, num_new, out, now_ns)
            if request.adapter is not None:
                adapters.add(request.adapter)
            budget.spend(request, num_new)

    def _adapter_fits(self, request: Request, adapters: set[str]) -> bool:
        if request.adapter is None or request.adapter in adapters:
            return True
        return len(adapters) < self.config.max_adapter_slots

    def _admit(self, request: Request, cached: CachedPrefix, num_new: int, out: SchedulerOutput,
               now_ns: int) -> None:
        self.block_manager.record_prefix_query(request, cached)
        self.block_manager.allocate(request, num_new, cached)
        request.num_cached_tokens = cached.num_tokens
        if request.first_scheduled_ns is None:
            request.first_scheduled_ns = now_ns
        request.num_computed_tokens = request.num_cached_tokens
        request.status = RequestStatus.RUNNING
        self.waiting.remove(request)
        self.running.append(request)
        out.chunks.append(ScheduledChunk(request, request.num_computed_tokens, num_new))

    def update(self, out: SchedulerOutput, results: dict[str, StepResult], now_ns: int) -> list[Request]:
        """Advance every scheduled request by its chunk; return the requests that finished."""
        finished = []
        for chunk in out.chunks:
            request = chunk.request
            request.num_computed_tokens += chunk.num_new_tokens
            self.block_manager.cache_full_blocks(request)
            result = results.get(request.request_id)
            if result is not None and self._apply_result(request, result, now_ns):
                self.running.remove(request)
                self._finish(request, RequestStatus.FINISHED, now_ns)
                finished.append(request)
        return finished

    def _apply_result(self, request: Request, result: StepResult, now_ns: int) -> bool:
        """Record the step's output; True when the request is done."""
        if request.first_token_ns is None:
            request.first_token_ns = now_ns
        if request.kind is RequestKind.SCORE:
            request.label_logits = result.label_logits
            return True
        request.append_token(result.next_token_id, result.logprobs)
        return request.is_generation_done()

    def abort(self, request_id: str, now_ns: int) -> Request | None:
        for queue in (self.waiting, self.running):
            for request in queue:
                if request.request_id == request_id:
                    queue.remove(request)
                    self._finish(request, RequestStatus.ABORTED, now_ns)
                    return request
        return None

    def _finish(self, request: Request, status: RequestStatus, now_ns: int) -> None:
        self.block_manager.free(request)
        request.status = status
        request.finished_ns = now_ns
        if status is RequestStatus.EXPIRED:
            self.num_expired += 1
