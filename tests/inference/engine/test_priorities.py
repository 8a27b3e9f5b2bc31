"""Scheduling classes in the real engine: an HTTP flood does not make a forecast expire that would not have
expired without it; without the classes (every request a forecast's) the same forecast expires."""
import pytest

from inference.engine.config import EngineConfig
from inference.engine.engine import Engine
from inference.engine.sequence import Priority, RequestKind, RequestStatus, SamplingParams

from .conftest import ENGINE_DEVICE

STEP_NS = 10_000_000          # the fake clock moves 10 ms per step


class StepClock:
    def __init__(self) -> None:
        self.now = 10**18

    def __call__(self) -> int:
        return self.now


def forecast_status(model_dir, chats_priority: Priority | None) -> RequestStatus:
    clock = StepClock()
    engine = Engine(model_dir, EngineConfig(block_size=4, num_blocks=512, max_num_seqs=8, max_num_batched_tokens=64),
                    ENGINE_DEVICE, clock_ns=clock)
    prompt = [5, 9, 13, 2, 7, 11]
    if chats_priority is not None:
        for i in range(40):
            engine.add_request(f"http{i}", prompt, RequestKind.GENERATE, max_new_tokens=60, priority=chats_priority,
                               sampling=SamplingParams(temperature=1.0, seed=i))
        for _ in range(5):                                        # the chats fill the batch
            clock.now += STEP_NS
            engine.step()
    engine.add_request("forecast", prompt[::-1], RequestKind.SCORE, label_token_ids=(1, 2, 3),
                       deadline_ns=clock.now + 20 * STEP_NS)
    while True:
        clock.now += STEP_NS
        for output in engine.step():
            if output.request_id == "forecast":
                return output.status


@pytest.mark.parametrize("chats, expected", [
    (None, RequestStatus.FINISHED),                          # no HTTP load
    (Priority.INTERACTIVE, RequestStatus.FINISHED),          # a flood of chats, in their class
    (Priority.DEADLINE, RequestStatus.EXPIRED),              # the same flood without classes
])
def test_an_http_flood_does_not_make_a_forecast_expire(tiny_qwen2, chats, expected):
    assert forecast_status(tiny_qwen2["model_dir"], chats) is expected


def steps_to_forecast_when_chats_hold_the_cache(model_dir, chats_priority: Priority) -> int:
    """Seats to spare but the KV blocks held by chats: the forecast needs blocks, not a seat. The number of
    engine steps from its arrival to its answer."""
    clock = StepClock()
    engine = Engine(model_dir, EngineConfig(block_size=4, num_blocks=16, max_num_seqs=8, max_num_batched_tokens=64,
                                            enable_prefix_caching=False), ENGINE_DEVICE, clock_ns=clock)
    for i in range(3):
        engine.add_request(f"http{i}", [5, 9, 13, 2, 7, 11, i + 20], RequestKind.GENERATE, max_new_tokens=50,
                           priority=chats_priority, sampling=SamplingParams(temperature=1.0, seed=i))
    for _ in range(20):                                           # the chats grow into every block
        clock.now += STEP_NS
        engine.step()
    prompt = [11, 7, 2, 13, 9, 5] * 3                             # needs 5 blocks of 4, one step of prefill
    assert engine.scheduler.block_manager.pool.num_free < 5
    engine.add_request("forecast", prompt, RequestKind.SCORE, label_token_ids=(1, 2, 3),
                       deadline_ns=clock.now + 20 * STEP_NS)
    for steps in range(1, 100):
        clock.now += STEP_NS
        for output in engine.step():
            if output.request_id == "forecast":
                assert output.status is RequestStatus.FINISHED
                return steps
    raise AssertionError("the forecast never finished")


def test_chats_holding_the_kv_blocks_give_them_up_to_a_forecast_at_once(tiny_qwen2):
    """In their class the chats yield their blocks at the forecast's first step; in the forecast's class
    they keep them until one of them needs a new block and the least urgent is preempted."""
    assert steps_to_forecast_when_chats_hold_the_cache(tiny_qwen2["model_dir"], Priority.INTERACTIVE) == 1
    assert steps_to_forecast_when_chats_hold_the_cache(tiny_qwen2["model_dir"], Priority.DEADLINE) > 1


def statuses_under_overload(model_dir, with_values: bool) -> dict[str, RequestStatus]:
    """Twelve forecasts at once, half of them worth much more, with deadlines 7 to 9 steps away; the engine
    serves one request per step (max_num_seqs=1): about 9 can be answered."""
    clock = StepClock()
    engine = Engine(model_dir, EngineConfig(block_size=4, num_blocks=256, max_num_seqs=1, max_num_batched_tokens=64),
                    ENGINE_DEVICE, clock_ns=clock)
    for i in range(12):
        value = 0.9 if i % 2 else 0.1
        engine.add_request(f"{value}-{i}", [5, 9, 13, 2, 7, i + 20], RequestKind.SCORE, label_token_ids=(1, 2, 3),
                           deadline_ns=clock.now + (7 + i % 3) * STEP_NS, value=value if with_values else 0.0)
    statuses = {}
    while engine.has_unfinished():
        clock.now += STEP_NS
        statuses |= {o.request_id: o.status for o in engine.step()}
    return statuses


@pytest.mark.parametrize("with_values", [True, False])
def test_under_overload_the_valuable_forecasts_are_answered_and_the_others_expire(tiny_qwen2, with_values):
    statuses = statuses_under_overload(tiny_qwen2["model_dir"], with_values)
    expired = sorted(rid for rid, status in statuses.items() if status is RequestStatus.EXPIRED)
    assert len(statuses) == 12 and len(expired) == 3
    if with_values:
        assert all(rid.startswith("0.1") for rid in expired)
    else:                                     # earliest deadline first, blind to value: valuable ones expire
        assert any(rid.startswith("0.9") for rid in expired)
