"""The serving engine: add_request / step / abort over scheduler, adapters and model runner."""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterable

import torch

from inference.engine.adapters import AdapterRegistry, AdapterSlots
from inference.engine.config import AUTO_DTYPE, EngineConfig
from inference.engine.cpu import default_dtype, default_quant
from inference.engine.lora import LoraAdapter, load_peft_adapter
from inference.engine.model import Transformer
from inference.engine.model_runner import ModelRunner
from inference.engine.scheduler import Scheduler, SchedulerOutput, StepCost
from inference.engine.sequence import Priority, Request, RequestKind, RequestStatus, SamplingParams


@dataclass(frozen=True, slots=True)
class RequestOutput:
    request_id: str
    status: RequestStatus
    label_logits: tuple[float, ...] | None
    output_token_ids: tuple[int, ...]
    num_cached_tokens: int
    num_preemptions: int


def _output(request: Request) -> RequestOutput:
    return RequestOutput(request.request_id, request.status, request.label_logits,
                         tuple(request.output_token_ids), request.num_cached_tokens, request.num_preemptions)


class Engine:
    def __init__(self, model_dir: str, config: EngineConfig | None = None, device: str = "cpu",
                 clock_ns: Callable[[], int] = time.time_ns) -> None:
        self.config = config or EngineConfig()
        self.clock_ns = clock_ns
        dtype = default_dtype(device) if self.config.dtype == AUTO_DTYPE else self.config.dtype
        quant = default_quant(device, dtype) if self.config.quant == "auto" else self.config.quant
        self.model = Transformer.from_dir(model_dir, getattr(torch, dtype), torch.device(device), quant)
        self.runner = ModelRunner(self.model, self.config)
        self.scheduler = Scheduler(self.config)
        self.registry: AdapterRegistry[LoraAdapter] = AdapterRegistry()
        self.slots = AdapterSlots(self.config.max_adapter_slots)
        self.step_cost = StepCost()      # what expiry predicts a waiting request's compute costs (learnt per step)
        self.step_times_s: deque[float] = deque(maxlen=4096)
        self.ttfts_s: deque[float] = deque(maxlen=4096)
        self.num_steps = 0
        self._known_ids: set[str] = set()

    # adapters -------------------------------------------------------------
    def register_adapter(self, name: str, path: str) -> None:
        """Load a PEFT LoRA folder into host memory; re-registering replaces it (old KV unused)."""
        adapter = load_peft_adapter(path, self.model.embed.dtype)
        if adapter.rank > self.config.max_lora_rank:
            raise ValueError(f"adapter {name!r} rank {adapter.rank} > max_lora_rank {self.config.max_lora_rank}")
        self.registry.register(name, adapter)
        self.slots.remove(name)

    def remove_adapter(self, name: str) -> list[RequestOutput]:
        """Forget an adapter; requests still using it are aborted and returned."""
        self.registry.remove(name)
        self.slots.remove(name)
        users = [r for r in self.scheduler.waiting + self.scheduler.running if r.adapter == name]
        return [self.abort(r.request_id) for r in users]

    # requests -------------------------------------------------------------
    def add_request(self, request_id: str, prompt_token_ids: list[int], kind: RequestKind,
                    adapter: str | None = None, deadline_ns: int | None = None,
                    label_token_ids: Iterable[int] = (), max_new_tokens: int = 0,
                    stop_token_ids: Iterable[int] = (), sampling: SamplingParams | None = None,
                    priority: Priority = Priority.DEADLINE, value: float = 0.0) -> Request:
        """Queue a request; the returned state is the engine's (read it between steps, never change it).
        `value`: within its class, higher first (the scheduler's value bands)."""
        request = Request(request_id, list(prompt_token_ids), kind, self.clock_ns(), adapter=adapter,
                          deadline_ns=deadline_ns, label_token_ids=tuple(label_token_ids),
                          max_new_tokens=max_new_tokens, stop_token_ids=frozenset(stop_token_ids),
                          priority=priority, value=value)
        if sampling is not None:
            request.sampling = sampling.seeded()
        if adapter is not None:
            request.adapter_version = self.registry.get(adapter).version
        self._validate(request)
        self._known_ids.add(request_id)
        self.scheduler.add(request)
        return request

    def _validate(self, request: Request) -> None:
        if request.request_id in self._known_ids:
            raise ValueError(f"request id {request.request_id!r} is already in the engine")
        if not request.prompt_token_ids:
            raise ValueError("empty prompt")
        if request.kind is RequestKind.SCORE and not request.label_token_ids:
            raise ValueError("a score request needs label_token_ids")
        if request.kind is RequestKind.GENERATE and request.max_new_tokens < 1:
            raise ValueError("a generate request needs max_new_tokens >= 1")
        limit = min(self.config.max_cached_tokens, self.model.config.max_position_embeddings)
        if request.max_total_tokens > limit:
            raise ValueError(f"request needs {request.max_total_tokens} tokens of KV, the engine holds {limit}")

    def abort(self, request_id: str) -> RequestOutput | None:
        request = self.scheduler.abort(request_id, self.clock_ns())
        if request is None:
            return None
        self._known_ids.discard(request_id)
        return _output(request)

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished()

    # stepping -------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        """One scheduling round and one forward pass; returns requests that finished or expired."""
        started_ns = self.clock_ns()
        out = self.scheduler.schedule(started_ns, self.step_cost)
        done = list(out.expired)
        if out.chunks:
            plan = self.slots.acquire(out.adapters)
            self._load(plan.loads)
            tables = {c.request.request_id: self.scheduler.block_manager.block_table(c.request.request_id)
                      for c in out.chunks}
            results = self.runner.execute(out, tables, plan.slot_of)
            sampled = [c.request for c in out.chunks if c.completes_sequence]
            done += self.scheduler.update(out, results, self.clock_ns())
            self._record_step(sampled, started_ns, sum(c.num_new_tokens for c in out.chunks))
            self._prefetch(out)
        for request in done:
            self._known_ids.discard(request.request_id)
        return [_output(r) for r in done]

    def _load(self, loads: list[tuple[str, int]]) -> None:
        for name, slot in loads:
            self.runner.lora_weights.load(slot, self.registry.get(name).weights)

    def _prefetch(self, out: SchedulerOutput) -> None:
        """Load the adapters the next waiting requests will need while slots are idle."""
        now_ns = self.clock_ns()
        upcoming = sorted(self.scheduler.waiting, key=lambda r: self.scheduler.priority(r, now_ns))
        names = [r.adapter for r in upcoming[:self.config.max_num_seqs] if r.adapter is not None]
        protected = out.adapters | {r.adapter for r in self.scheduler.running if r.adapter is not None}
        self._load(self.slots.prefetch(names, protected))

    def _record_step(self, sampled: list[Request], started_ns: int, num_tokens: int) -> None:
        ended_ns = self.clock_ns()
        elapsed_ns = ended_ns - started_ns
        self.step_cost = learn_step_cost(self.step_cost, elapsed_ns, num_tokens)
        self.step_times_s.append(elapsed_ns / 1e9)
        self.num_steps += 1
        for request in sampled:
            if request.kind is RequestKind.SCORE or len(request.output_token_ids) == 1:
                self.ttfts_s.append((request.first_token_ns - request.arrival_ns) / 1e9)

    def run_until_done(self, max_steps: int = 1_000_000) -> list[RequestOutput]:
        outputs: list[RequestOutput] = []
        for _ in range(max_steps):
            if not self.has_unfinished():
                return outputs
            outputs += self.step()
        raise RuntimeError(f"engine did not drain in {max_steps} steps")

    def metrics(self) -> dict:
        bm, pool = self.scheduler.block_manager, self.scheduler.block_manager.pool
        return {
            "queue_depth": len(self.scheduler.waiting),
            "running": len(self.scheduler.running),
            "kv_blocks_used": pool.num_used,
            "kv_blocks_free": pool.num_free,
            "prefix_cache_hit_rate": bm.prefix_hit_tokens / max(bm.prefix_query_tokens, 1),
            "adapter_loads": self.slots.num_loads,
            "adapter_evictions": self.slots.num_evictions,
            "preemptions": self.scheduler.num_preemptions,
            "expired": self.scheduler.num_expired,
            "steps": self.num_steps,
            "ttft_s_p50": _quantile(self.ttfts_s, 0.5),
            "ttft_s_p99": _quantile(self.ttfts_s, 0.99),
            "step_time_s_p50": _quantile(self.step_times_s, 0.5),
            "step_time_s_last": self.step_times_s[-1] if self.step_times_s else 0.0,
        }


SMALL_STEP_TOKENS = 8      # a step of at most this many tokens measures the fixed cost of a step
LARGE_STEP_TOKENS = 64     # a step of at least this many measures the cost per token


def learn_step_cost(cost: StepCost, elapsed_ns: int, num_tokens: int, weight: float = 0.2) -> StepCost:
    """`cost` moved toward one step's measurement: small steps (decodes) teach the fixed part, large ones
    (prefill) the part per token, net of the fixed part; a first measurement of either is taken as it is."""
    def ema(old: int, new: float) -> int:
        return int(new) if old == 0 else int((1 - weight) * old + weight * new)

    if num_tokens <= SMALL_STEP_TOKENS:
        return StepCost(ema(cost.per_step_ns, elapsed_ns), cost.per_token_ns)
    if num_tokens >= LARGE_STEP_TOKENS:
        return StepCost(cost.per_step_ns, ema(cost.per_token_ns, max(elapsed_ns - cost.per_step_ns, 0) / num_tokens))
    return cost


def _quantile(values: Iterable[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)] if ordered else 0.0
