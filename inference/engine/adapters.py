"""Which adapters are registered (host) and which sit in the bounded device slots. No torch.

All registered adapters live in host memory; `AdapterSlots` decides which of them occupy
the `num_slots` device slots, evicting the least recently used one that the current
step does not need. `prefetch` fills slots ahead with the next step's likely adapters.
The caller copies weights for every (name, slot) it is told to load.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Generic, Iterable, TypeVar

Payload = TypeVar("Payload")


@dataclass(frozen=True, slots=True)
class SlotPlan:
    slot_of: dict[str, int]           # every adapter the step needs -> its slot
    loads: list[tuple[str, int]]      # (adapter, slot) to copy in before the step runs
    evictions: list[str]


class AdapterSlots:
    def __init__(self, num_slots: int) -> None:
        self.num_slots = num_slots
        self._resident: OrderedDict[str, int] = OrderedDict()  # least recently used first
        self._free_slots = list(range(num_slots))
        self.num_loads = 0
        self.num_evictions = 0
        self.num_hits = 0

    @property
    def resident(self) -> list[str]:
        return list(self._resident)

    def slot_of(self, name: str) -> int | None:
        return self._resident.get(name)

    def acquire(self, names: Iterable[str]) -> SlotPlan:
        """Make every adapter in `names` resident; raise if they cannot all fit."""
        needed = list(dict.fromkeys(names))
        if len(needed) > self.num_slots:
            raise ValueError(f"{len(needed)} adapters in one step, only {self.num_slots} slots")
        loads, evictions = [], []
        for name in needed:
            if name in self._resident:
                self._resident.move_to_end(name)
                self.num_hits += 1
                continue
            slot = self._take_slot(set(needed), evictions)
            loads.append((name, slot))
            self._place(name, slot)
        return SlotPlan({n: self._resident[n] for n in needed}, loads, evictions)

    def prefetch(self, names: Iterable[str], protected: set[str]) -> list[tuple[str, int]]:
        """Load likely next adapters into free slots or over unprotected LRU ones."""
        loads: list[tuple[str, int]] = []
        evictions: list[str] = []
        keep = set(protected)
        for name in dict.fromkeys(names):
            if name in self._resident:
                keep.add(name)
                continue
            if not self._free_slots and all(n in keep for n in self._resident):
                break
            slot = self._take_slot(keep, evictions)
            keep.add(name)
            loads.append((name, slot))
            self._place(name, slot)
        return loads

    def remove(self, name: str) -> None:
        slot = self._resident.pop(name, None)
        if slot is not None:
            self._free_slots.append(slot)

    def _take_slot(self, protected: set[str], evictions: list[str]) -> int:
        if self._free_slots:
            return self._free_slots.pop(0)
        victim = next(n for n in self._resident if n not in protected)
        evictions.append(victim)
        self.num_evictions += 1
        return self._resident.pop(victim)

    def _place(self, name: str, slot: int) -> None:
        self._resident[name] = slot
        self.num_loads += 1


@dataclass(frozen=True, slots=True)
class RegisteredAdapter(Generic[Payload]):
    name: str
    version: int
    weights: Payload


class AdapterRegistry(Generic[Payload]):
    """Host-side store of every registered adapter; re-registering a name bumps its version."""

    def __init__(self) -> None:
        self._adapters: dict[str, RegisteredAdapter[Payload]] = {}
        self._next_version = 1

    def register(self, name: str, weights: Payload) -> RegisteredAdapter[Payload]:
        entry = RegisteredAdapter(name, self._next_version, weights)
        self._next_version += 1
        self._adapters[name] = entry
        return entry

    def remove(self, name: str) -> None:
        if name not in self._adapters:
            raise KeyError(f"adapter {name!r} is not registered")
        del self._adapters[name]

    def get(self, name: str) -> RegisteredAdapter[Payload]:
        if name not in self._adapters:
            raise KeyError(f"adapter {name!r} is not registered")
        return self._adapters[name]

    def __contains__(self, name: str) -> bool:
        return name in self._adapters

    @property
    def names(self) -> list[str]:
        return list(self._adapters)
