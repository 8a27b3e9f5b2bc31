"""The serving loop: one thread owns the (synchronous) engine; everything else talks to it through a queue.

`EngineLoop` runs `Engine.step` whenever there is work and, between steps, the commands other threads
queued (add a request, abort one, register an adapter, read metrics). HTTP handlers `generate` from the
asyncio loop: their request enters the engine as interactive and each step's new tokens come back as
`Delta`s on an asyncio queue; a handler that stops listening (its client went away) aborts its request,
which frees its KV blocks. The inference worker's forecasts enter the same engine through `LoopScorer`,
a `Scorer` whose `score` waits for its requests' outputs, so both share one scheduler (forecasts first).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import logging
import queue
import threading
from dataclasses import dataclass, field
from typing import AsyncIterator, Callable, Iterator, Sequence, TypeVar

from inference.engine.engine import RequestOutput
from inference.engine.sequence import (Priority, Request, RequestKind, RequestStatus, SamplingParams,
                                       TokenLogprobs)
from inference.scorers.base import ScoreItem, ScoreResult
from inference.scorers.engine import EngineScorer

log = logging.getLogger("finllm.api.loop")
T = TypeVar("T")
IDLE_WAIT_S = 0.05          # how long the idle loop waits for a command before checking for shutdown


@dataclass(frozen=True, slots=True)
class Timing:
    """Where a request's time went, in milliseconds (engine clock): waiting, first token, later tokens."""

    queue_ms: float
    prefill_ms: float
    decode_ms: float

    @classmethod
    def of(cls, request: Request, now_ns: int) -> "Timing":
        """So far (`now_ns`: the engine clock) or, for a finished request, in all."""
        end = request.finished_ns if request.finished_ns is not None else now_ns
        ms = lambda a, b: max(b - a, 0) / 1e6 if a is not None and b is not None else 0.0   # noqa: E731
        scheduled = request.first_scheduled_ns
        return cls(ms(request.arrival_ns, scheduled if scheduled is not None else end),
                   ms(scheduled, request.first_token_ns), ms(request.first_token_ns, end))


@dataclass(frozen=True, slots=True)
class Delta:
    """New output of one generate request since the last delta; `status` set on the last one; `timing`
    up to this delta."""

    token_ids: tuple[int, ...]
    logprobs: tuple[TokenLogprobs, ...] = ()
    status: RequestStatus | None = None
    timing: Timing | None = None

    @property
    def finished(self) -> bool:
        return self.status is not None


@dataclass(slots=True)
class _Stream:
    request: Request
    loop: asyncio.AbstractEventLoop
    deltas: asyncio.Queue
    sent: int = 0

    def push(self, now_ns: int) -> bool:
        """Send what is new; True when the request is done (its last delta sent)."""
        tokens = self.request.output_token_ids
        done = self.request.status.is_done
        if len(tokens) == self.sent and not done:
            return False
        delta = Delta(tuple(tokens[self.sent:]), tuple(self.request.output_logprobs[self.sent:]),
                      self.request.status if done else None, Timing.of(self.request, now_ns))
        self.sent = len(tokens)
        self.loop.call_soon_threadsafe(self.deltas.put_nowait, delta)
        return done


@dataclass(slots=True)
class _Commands:
    pending: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)

    def put(self, fn: Callable[[], T]) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        self.pending.put((fn, future))
        return future


class EngineLoop:
    """Steps an `EngineScorer`'s engine in its own thread; `call` runs a function on that thread."""

    def __init__(self, scorer: EngineScorer) -> None:
        self.scorer = scorer
        self.engine = scorer.engine
        self._commands = _Commands()
        self._streams: dict[str, _Stream] = {}
        self._waiters: dict[str, concurrent.futures.Future] = {}
        self._ids = itertools.count()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="finllm-engine-loop", daemon=True)

    # lifecycle -----------------------------------------------------------------------------------
    def start(self) -> "EngineLoop":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=30)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    # commands ------------------------------------------------------------------------------------
    def call(self, fn: Callable[[], T]) -> concurrent.futures.Future:
        """Run `fn` on the engine thread between two steps; its result (or exception) in the future."""
        if not self.alive:
            raise RuntimeError("the engine loop is not running")
        return self._commands.put(fn)

    async def run(self, fn: Callable[[], T]) -> T:
        return await asyncio.wrap_future(self.call(fn))

    # generation (asyncio side) -------------------------------------------------------------------
    async def generate(self, prompt_token_ids: list[int], *, max_tokens: int, adapter: str | None = None,
                       sampling: SamplingParams | None = None,
                       stop_token_ids: Sequence[int] = ()) -> AsyncIterator[Delta]:
        """The request's output as it decodes; leaving the iteration early aborts the request.
        ValueError (before the first delta) when the engine refuses the request."""
        rid = f"http-{next(self._ids)}"
        deltas: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()

        def add() -> None:
            request = self.engine.add_request(rid, prompt_token_ids, RequestKind.GENERATE, adapter=adapter,
                                              max_new_tokens=max_tokens, stop_token_ids=stop_token_ids,
                                              sampling=sampling, priority=Priority.INTERACTIVE)
            self._streams[rid] = _Stream(request, loop, deltas)

        await self.run(add)
        done = False
        try:
            while not done:
                delta = await deltas.get()
                done = delta.finished
                yield delta
        finally:
            if not done:
                self.abort(rid)

    def abort(self, request_id: str) -> concurrent.futures.Future:
        """Abort a request from any thread (its KV blocks are freed on the engine thread)."""
        def abort() -> None:
            self._streams.pop(request_id, None)
            self.engine.abort(request_id)
        return self._commands.put(abort)

    # scoring (worker threads) --------------------------------------------------------------------
    def score(self, items: Sequence[ScoreItem]) -> list[ScoreResult]:
        """`EngineScorer.score` through the loop: blocks the calling thread, not the engine. Background items
        (warm-ups) are queued and not waited for (answered with no probabilities): scheduled after every
        interactive request, they could otherwise hold the caller (the worker's Kafka loop) for as long as
        an HTTP flood lasts; the engine runs them when it gets to them, or lets them expire."""
        def submit() -> list[concurrent.futures.Future | None]:
            futures = []
            for item in items:
                rid = self.scorer.submit(item)
                wait = rid is not None and not item.background
                futures.append(self._waiters.setdefault(rid, concurrent.futures.Future()) if wait else None)
            return futures

        futures = self.call(submit).result()
        return [self.scorer.result(item, None if f is None else f.result()) for item, f in zip(items, futures)]

    # the engine thread ---------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stopping.is_set():
            self._run_commands(wait=not self.engine.has_unfinished())
            if self.engine.has_unfinished():
                try:
                    outputs = self.engine.step()
                except Exception as error:           # a failed step fails its requests, not the server
                    log.exception("engine step failed")
                    self._fail_all(error)
                    continue
                self._dispatch(outputs)
        stopped = RuntimeError("the engine loop stopped")
        self._fail_all(stopped)
        while not self._commands.pending.empty():
            self._commands.pending.get_nowait()[1].set_exception(stopped)

    def _run_commands(self, wait: bool) -> None:
        try:
            fn, future = self._commands.pending.get(timeout=IDLE_WAIT_S) if wait else \
                self._commands.pending.get_nowait()
        except queue.Empty:
            return
        while True:
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn())
                except BaseException as error:       # handed to the caller
                    future.set_exception(error)
            try:
                fn, future = self._commands.pending.get_nowait()
            except queue.Empty:
                return

    def _dispatch(self, outputs: list[RequestOutput]) -> None:
        for output in outputs:
            waiter = self._waiters.pop(output.request_id, None)
            if waiter is not None:
                waiter.set_result(output)
        now_ns = self.engine.clock_ns()
        for rid in [rid for rid, stream in self._streams.items() if stream.push(now_ns)]:
            del self._streams[rid]

    def _fail_all(self, error: BaseException) -> None:
        for request in list(self.engine.scheduler.waiting + self.engine.scheduler.running):
            self.engine.abort(request.request_id)
        self._dispatch([])                           # streams get their (aborted) last delta
        for waiter in self._waiters.values():
            waiter.set_exception(error)
        self._waiters.clear()


class LoopScorer:
    """The worker's `Scorer` over an `EngineLoop`: forecasts share the engine with the HTTP requests.
    `score` may be called from several threads at once: their requests share the engine's steps."""

    concurrent = True

    def __init__(self, loop: EngineLoop) -> None:
        self.loop = loop
        self.model_name = loop.scorer.model_name

    def score(self, items: Sequence[ScoreItem]) -> list[ScoreResult]:
        return self.loop.score(items)

    def register_adapter(self, name: str, path: str) -> None:
        self.loop.call(lambda: self.loop.scorer.register_adapter(name, path)).result()

    def remove_adapter(self, name: str) -> None:
        self.loop.call(lambda: self.loop.scorer.remove_adapter(name)).result()

    @property
    def adapter_names(self) -> frozenset[str]:
        return self.loop.scorer.adapter_names

    @property
    def resident_adapters(self) -> frozenset[str]:
        return self.loop.scorer.resident_adapters

    @property
    def prefix_caching(self) -> bool:
        return self.loop.scorer.prefix_caching

    def metrics(self) -> dict:
        return self.loop.call(self.loop.scorer.metrics).result()

    def close(self) -> None:
        self.loop.stop()
        self.loop.scorer.close()


@contextlib.contextmanager
def looping(scorer: EngineScorer) -> Iterator[LoopScorer]:
    """`scorer`'s engine stepped in its own thread until the block exits, as a LoopScorer."""
    loop = EngineLoop(scorer).start()
    try:
        yield LoopScorer(loop)
    finally:
        loop.stop()
