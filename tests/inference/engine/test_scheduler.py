import random

from inference.engine.config import EngineConfig
from inference.engine.scheduler import Scheduler, SchedulerOutput, StepResult
from inference.engine.sequence import Priority, Request, RequestKind, RequestStatus

from .test_block_manager import assert_consistent

S = 1_000_000_000


def score(rid, n, arrival_ns=0, deadline_ns=None, adapter=None):
    return Request(rid, list(range(n)), RequestKind.SCORE, arrival_ns, adapter=adapter,
                   deadline_ns=deadline_ns, label_token_ids=(1, 2))


def generate(rid, n, max_new, arrival_ns=0, deadline_ns=None):
    return Request(rid, list(range(n)), RequestKind.GENERATE, arrival_ns,
                   deadline_ns=deadline_ns, max_new_tokens=max_new)


def fake_results(out: SchedulerOutput) -> dict[str, StepResult]:
    """Stand-in model output: label logits for scores, token 7 for generations."""
    results = {}
    for chunk in out.chunks:
        if chunk.completes_sequence:
            rid = chunk.request.request_id
            results[rid] = StepResult(rid, next_token_id=7, label_logits=(0.0, 1.0))
    return results


def step(sched: Scheduler, now_ns: int = 0):
    out = sched.schedule(now_ns)
    finished = sched.update(out, fake_results(out), now_ns)
    return out, finished


def test_long_prompt_is_prefilled_in_chunks_under_the_budget():
    sched = Scheduler(EngineConfig(block_size=4, num_blocks=16, max_num_batched_tokens=8))
    sched.add(score("a", 20))
    sizes = []
    while sched.has_unfinished():
        out, finished = step(sched)
        sizes.append([(c.start, c.num_new_tokens) for c in out.chunks])
    assert sizes == [[(0, 8)], [(8, 8)], [(16, 4)]]
    assert sched.block_manager.pool.num_free == 16


def test_requests_join_and_leave_the_batch_every_step():
    sched = Scheduler(EngineConfig(block_size=4, num_blocks=16, max_num_batched_tokens=6))
    sched.add(generate("g", 3, max_new=3))
    out, _ = step(sched)
    sched.add(score("s", 4))
    out, _ = step(sched)  # g decodes one token, s prefills 4 of its tokens (budget 6)
    assert [(c.request.request_id, c.num_new_tokens) for c in out.chunks] == [("g", 1), ("s", 4)]
    out, finished = step(sched)
    assert [r.request_id for r in finished] == ["g"]
    assert finished[0].output_token_ids == [7, 7, 7]


def test_earliest_deadline_first_and_starvation_guard():
    config = EngineConfig(block_size=4, num_blocks=16, max_num_seqs=1, starvation_timeout_s=5)
    sched = Scheduler(config)
    sched.add(score("late", 4, arrival_ns=0, deadline_ns=100 * S))
    sched.add(score("soon", 4, arrival_ns=1, deadline_ns=50 * S))
    sched.add(score("none", 4, arrival_ns=2))
    order = [step(sched, now_ns=1 * S)[1][0].request_id for _ in range(3)]
    assert order == ["soon", "late", "none"]
    sched.add(score("old", 4, arrival_ns=0))
    sched.add(score("urgent", 4, arrival_ns=9 * S, deadline_ns=60 * S))
    assert step(sched, now_ns=10 * S)[1][0].request_id == "old"  # waited 10 s > 5 s guard


def test_expired_requests_are_answered_not_run():
    sched = Scheduler(EngineConfig(block_size=4, num_blocks=16, max_num_batched_tokens=8))
    sched.add(score("past", 4, deadline_ns=5 * S))
    sched.add(score("too_long", 20, deadline_ns=12 * S))  # needs 3 steps of 1 s
    sched.add(score("fine", 4, deadline_ns=12 * S))
    out = sched.schedule(now_ns=10 * S, step_time_ns=1 * S)
    assert sorted(r.request_id for r in out.expired) == ["past", "too_long"]
    assert [c.request.request_id for c in out.chunks] == ["fine"]
    assert all(r.status is RequestStatus.EXPIRED for r in out.expired)


def test_running_request_past_its_deadline_is_expired_and_its_blocks_freed():
    sched = Scheduler(EngineConfig(block_size=4, num_blocks=16, max_num_batched_tokens=4))
    sched.add(score("a", 12, deadline_ns=2 * S))
    step(sched, now_ns=1 * S)
    out = sched.schedule(now_ns=3 * S)
    assert [r.request_id for r in out.expired] == ["a"] and not out.chunks
    assert sched.block_manager.pool.num_free == 16


def test_preemption_by_recompute_when_blocks_run_out():
    sched = Scheduler(EngineConfig(block_size=2, num_blocks=4, max_num_batched_tokens=16))
    sched.add(generate("a", 3, max_new=4, arrival_ns=0, deadline_ns=10 * S))
    sched.add(generate("b", 3, max_new=4, arrival_ns=1, deadline_ns=20 * S))
    preempted, finished = [], []
    for _ in range(20):
        out, done = step(sched)
        preempted += [r.request_id for r in out.preempted]
        finished += [r.request_id for r in done]
        if not sched.has_unfinished():
            break
    assert preempted and preempted[0] == "b"  # the later deadline gives way
    assert finished == ["a", "b"]
    assert sched.block_manager.pool.num_free == 4


def test_adapter_slots_bound_the_distinct_adapters_in_a_batch():
    sched = Scheduler(EngineConfig(block_size=4, num_blocks=32, max_adapter_slots=2))
    for i, adapter in enumerate(["x", "y", "z", "x", None]):
        sched.add(score(f"r{i}", 4, arrival_ns=i, adapter=adapter))
    out = sched.schedule(0)
    assert [c.request.request_id for c in out.chunks] == ["r0", "r1", "r3", "r4"]
    assert out.adapters == {"x", "y"}


def test_fuzz_random_requests_and_aborts_never_hang_and_free_every_block():
    rng = random.Random(1)
    config = EngineConfig(block_size=4, num_blocks=24, max_num_batched_tokens=32,
                          max_num_seqs=8, max_adapter_slots=2)
    sched = Scheduler(config)
    live: dict[str, Request] = {}
    for i in range(2000):
        kind = rng.random()
        tokens = [rng.randrange(3) for _ in range(rng.randrange(1, 30))]
        adapter = rng.choice([None, "x", "y", "z"])
        if kind < 0.5:
            request = Request(str(i), tokens, RequestKind.SCORE, i, adapter=adapter, label_token_ids=(1,))
        else:
            request = Request(str(i), tokens, RequestKind.GENERATE, i, adapter=adapter,
                              max_new_tokens=rng.randrange(1, 40), stop_token_ids=frozenset({5}))
        sched.add(request)
        live[request.request_id] = request
        if rng.random() < 0.1:
            sched.abort(rng.choice(list(live)), now_ns=i)
        _, done = step(sched, now_ns=i)
    for _ in range(100_000):
        if not sched.has_unfinished():
            break
        step(sched, now_ns=10**6)
    assert not sched.has_unfinished()
    assert sched.block_manager.pool.num_free == 24
    assert all(count == 0 for count in sched.block_manager.pool.ref_counts)
    assert sched.num_preemptions > 0


# partial-block prefix reuse --------------------------------------------------

class FakeKV:
    """Stands in for the KV cache: each slot remembers which (adapter, prefix) wrote it, and
    every chunk checks that the slots of its context hold its own prefix."""

    def __init__(self, sched: Scheduler) -> None:
        self.sched = sched
        self.slots: dict[int, tuple] = {}

    def run(self, out: SchedulerOutput) -> None:
        bs = self.sched.config.block_size
        for chunk in out.chunks:
            request = chunk.request
            table, tokens = self.sched.block_manager.block_table(request.request_id), request.token_ids
            slot = lambda p: table[p // bs] * bs + p % bs  # noqa: E731
            for p in range(chunk.start):
                assert self.slots.get(slot(p)) == (request.adapter, tuple(tokens[:p + 1])), (request.request_id, p)
            for p in range(chunk.start, chunk.start + chunk.num_new_tokens):
                self.slots[slot(p)] = (request.adapter, tuple(tokens[:p + 1]))


def checked_step(sched: Scheduler, kv: FakeKV, now_ns: int = 0):
    out = sched.schedule(now_ns)
    kv.run(out)
    finished = sched.update(out, fake_results(out), now_ns)
    assert_consistent(sched.block_manager)
    return out, finished


def drain(sched: Scheduler, kv: FakeKV, now_ns: int = 0) -> None:
    while sched.has_unfinished():
        checked_step(sched, kv, now_ns)


def warmed_scheduler(head_len: int) -> tuple[Scheduler, FakeKV]:
    """A scheduler (blocks of 16) that has scored the warm-up `range(head_len)`."""
    sched = Scheduler(EngineConfig(block_size=16, num_blocks=16))
    kv = FakeKV(sched)
    sched.add(score("head", head_len))
    drain(sched, kv)
    return sched, kv


def test_head_plus_tail_starts_where_the_warm_up_of_its_head_stopped():
    sched, kv = warmed_scheduler(37)
    sched.add(score("full", 57))                  # tokens 0..56: the head, then 20 more
    out, _ = checked_step(sched, kv)
    [chunk] = out.chunks
    assert (chunk.start, chunk.num_new_tokens, chunk.request.num_cached_tokens) == (37, 20, 37)
    assert sched.block_manager.prefix_hit_tokens == 37
    assert sched.block_manager.pool.num_free == 16


def test_two_requests_with_one_head_admitted_together_only_the_first_takes_the_partial_block():
    sched, kv = warmed_scheduler(37)
    sched.add(score("a", 57, arrival_ns=1))
    sched.add(score("b", 60, arrival_ns=2))
    out, _ = checked_step(sched, kv)
    assert [(c.request.request_id, c.start) for c in out.chunks] == [("a", 37), ("b", 32)]
    drain(sched, kv)
    assert sched.block_manager.pool.num_free == 16


def test_abort_and_preemption_after_a_partial_hit_keep_the_free_count():
    sched = Scheduler(EngineConfig(block_size=4, num_blocks=8, max_num_batched_tokens=4))
    kv = FakeKV(sched)
    sched.add(score("head", 6))
    drain(sched, kv)
    sched.add(score("a", 14))                     # takes over the head's partial block, 8 tokens left
    out, _ = checked_step(sched, kv)
    assert out.chunks[0].start == 6
    assert sched.abort("a", 0) is not None
    assert_consistent(sched.block_manager)
    assert sched.block_manager.pool.num_free == 8
    sched.add(generate("g", 9, max_new=12, arrival_ns=1, deadline_ns=10 * S))
    sched.add(generate("h", 7, max_new=12, arrival_ns=2, deadline_ns=20 * S))
    preempted = []
    while sched.has_unfinished():
        out, _ = checked_step(sched, kv)
        preempted += out.preempted
    assert preempted and sched.block_manager.pool.num_free == 8


def test_fuzz_warm_ups_then_extensions_with_preemption_and_aborts():
    rng = random.Random(2)
    config = EngineConfig(block_size=4, num_blocks=20, max_num_batched_tokens=24, max_num_seqs=6)
    sched = Scheduler(config)
    kv = FakeKV(sched)
    heads = [([rng.randrange(3) for _ in range(rng.randrange(1, 14))], rng.choice([None, "x"])) for _ in range(6)]
    partial_hits = 0
    for i in range(1500):
        head, adapter = rng.choice(heads)
        tokens = head + [rng.randrange(3) for _ in range(rng.randrange(0, 12) if rng.random() < 0.7 else 0)]
        if rng.random() < 0.5:
            request = Request(str(i), tokens, RequestKind.SCORE, i, adapter=adapter, label_token_ids=(1,))
        else:
            request = Request(str(i), tokens, RequestKind.GENERATE, i, adapter=adapter,
                              max_new_tokens=rng.randrange(1, 20))
        sched.add(request)
        if rng.random() < 0.1:
            sched.abort(str(rng.randrange(i + 1)), now_ns=i)
            assert_consistent(sched.block_manager)
        out, _ = checked_step(sched, kv, now_ns=i)
        partial_hits += sum(1 for c in out.chunks if c.start == c.request.num_cached_tokens and c.start % 4)
    drain(sched, kv, now_ns=10**6)
    assert sched.block_manager.pool.num_free == 20
    assert sched.num_preemptions > 0 and partial_hits > 50


def test_a_forecast_queued_behind_many_http_requests_is_scheduled_first():
    from inference.engine.sequence import Priority

    sched = Scheduler(EngineConfig(block_size=4, num_blocks=256, max_num_batched_tokens=16, max_num_seqs=4))
    for i in range(12):
        request = generate(f"http{i}", 6, max_new=50)
        request.priority = Priority.INTERACTIVE
        sched.add(request)
    for _ in range(3):                                   # the batch fills with chats
        step(sched, now_ns=0)
    assert len(sched.running) == 4
    warm = score("warm", 6)
    warm.priority = Priority.BACKGROUND
    sched.add(warm)
    sched.add(score("forecast", 6, arrival_ns=1, deadline_ns=10 * S))
    out, finished = step(sched, now_ns=2)
    assert "forecast" in [c.request.request_id for c in out.chunks]
    assert [r.request_id for r in finished] == ["forecast"]
    assert len(out.preempted) == 1 and out.preempted[0].priority is Priority.INTERACTIVE
    order = []
    while sched.has_unfinished():
        order += [r.request_id for r in step(sched, now_ns=3)[1]]
    assert order[-1] == "warm"                               # warm-ups after every chat
    assert sched.block_manager.pool.num_free == 256


def valued(rid, value, deadline_s, arrival_ns=0):
    request = score(rid, 4, arrival_ns=arrival_ns, deadline_ns=deadline_s * S)
    request.value = value
    return request


def test_higher_value_first_within_a_class_and_deadlines_within_a_value_band():
    sched = Scheduler(EngineConfig(block_size=4, num_blocks=16, max_num_seqs=1, starvation_timeout_s=60))
    for request in (valued("low-soon", 0.1, 20), valued("high-late", 0.9, 90), valued("high-soon", 0.8, 80),
                    valued("mid", 0.5, 30)):
        sched.add(request)
    order = [step(sched, now_ns=1 * S)[1][0].request_id for _ in range(4)]
    assert order == ["high-soon", "high-late", "mid", "low-soon"]   # 0.8 and 0.9 share the top band


def test_value_never_outranks_a_more_urgent_class():
    sched = Scheduler(EngineConfig(block_size=4, num_blocks=16, max_num_seqs=1))
    warm = valued("warm-up", 1.0, 50)
    warm.priority = Priority.BACKGROUND
    sched.add(warm)
    sched.add(valued("forecast", 0.0, 90))
    assert step(sched, now_ns=1 * S)[1][0].request_id == "forecast"


def test_a_forecasts_step_carries_no_prefill_of_chats_or_warmups():
    """While a forecast is in the engine, chats already decoding go on (one token each), but no chat or
    warm-up prefills in its step: on the CPU they would make the forecast's step as long as their prefills."""
    from inference.engine.sequence import Priority

    sched = Scheduler(EngineConfig(block_size=4, num_blocks=64, max_num_batched_tokens=64,
                                   enable_prefix_caching=False))
    decoding = generate("chat", 6, max_new=5)
    decoding.priority = Priority.INTERACTIVE
    sched.add(decoding)
    step(sched)                                          # prefilled: it decodes from now on
    for request, priority in ((generate("chat2", 6, max_new=5), Priority.INTERACTIVE),
                              (score("warm", 8), Priority.BACKGROUND)):
        request.priority = priority
        sched.add(request)
    sched.add(score("forecast", 8, arrival_ns=1, deadline_ns=10 * S))
    out, finished = step(sched, now_ns=2)
    assert [(c.request.request_id, c.num_new_tokens) for c in out.chunks] == [("chat", 1), ("forecast", 8)]
    assert [r.request_id for r in finished] == ["forecast"]
    out, _ = step(sched, now_ns=3)                        # no forecast left: the others prefill
    assert [(c.request.request_id, c.num_new_tokens) for c in out.chunks] == [("chat", 1), ("chat2", 6), ("warm", 8)]


def test_less_urgent_requests_compute_short_steps_that_a_forecast_waits_for_little():
    """HTTP requests and warm-ups share `max_yielding_batched_tokens` a step (chunked prefills beyond it),
    so a forecast arriving mid-step waits for a short one; the forecast itself gets the whole budget."""
    from inference.engine.sequence import Priority

    sched = Scheduler(EngineConfig(block_size=4, num_blocks=64, max_num_batched_tokens=64,
                                   max_yielding_batched_tokens=16, enable_prefix_caching=False))
    chat = generate("chat", 10, max_new=3)
    chat.priority = Priority.INTERACTIVE
    sched.add(chat)
    for i in range(3):
        warm = score(f"warm{i}", 12)
        warm.priority = Priority.BACKGROUND
        sched.add(warm)
    out, _ = step(sched)
    assert [(c.request.request_id, c.num_new_tokens) for c in out.chunks] == [("chat", 10), ("warm0", 6)]
    sched.add(score("forecast", 40, arrival_ns=1, deadline_ns=10 * S))
    out, finished = step(sched, now_ns=2)
    assert [(c.request.request_id, c.num_new_tokens) for c in out.chunks] == [("chat", 1), ("forecast", 40)]
    assert [r.request_id for r in finished] == ["forecast"]
    out, _ = step(sched, now_ns=3)
    assert [(c.request.request_id, c.num_new_tokens) for c in out.chunks] == [("chat", 1), ("warm0", 6), ("warm1", 9)]
