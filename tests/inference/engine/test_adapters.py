import subprocess
import sys

import pytest

from inference.engine.adapters import AdapterRegistry, AdapterSlots


def test_lru_eviction_order_and_exact_slots():
    slots = AdapterSlots(2)
    plan = slots.acquire(["x", "y"])
    assert plan.loads == [("x", 0), ("y", 1)] and plan.evictions == []
    slots.acquire(["x"])                      # y is now least recently used
    plan = slots.acquire(["z"])
    assert plan.evictions == ["y"] and plan.loads == [("z", 1)]
    assert slots.resident == ["x", "z"]
    plan = slots.acquire(["y", "z"])          # z needed: x goes
    assert plan.evictions == ["x"] and plan.slot_of == {"y": 0, "z": 1}
    assert (slots.num_loads, slots.num_evictions, slots.num_hits) == (4, 2, 2)


def test_acquire_refuses_more_adapters_than_slots():
    with pytest.raises(ValueError):
        AdapterSlots(1).acquire(["x", "y"])


def test_prefetch_never_evicts_protected_adapters():
    slots = AdapterSlots(3)
    slots.acquire(["x", "y"])
    assert slots.prefetch(["a", "b"], protected={"x", "y"}) == [("a", 2)]
    assert slots.prefetch(["b"], protected={"x"}) == [("b", 1)]   # y is unprotected and oldest
    assert slots.resident == ["x", "a", "b"]


def test_registry_versions_bump_on_reregistration():
    registry: AdapterRegistry[str] = AdapterRegistry()
    first = registry.register("x", "w1")
    second = registry.register("x", "w2")
    assert second.version > first.version and registry.get("x").weights == "w2"
    registry.remove("x")
    with pytest.raises(KeyError):
        registry.get("x")


def test_bookkeeping_modules_import_no_torch():
    code = ("import sys; import inference.engine.scheduler, inference.engine.block_manager, "
            "inference.engine.adapters, inference.engine.config; assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
