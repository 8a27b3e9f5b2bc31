"""The audit trail: every forecast's inputs as a hash chain per producer, and its verification.

Each producer (one agents process) keeps its own chain on the single-partition `audit` topic, keyed
by its producer id. Entry n carries the hash of entry n-1, and its own hash is

    blake2b(prev_hash || canonical({"producer", "seq", "payload"}))

(canonical: orjson with sorted keys), so a changed, deleted, inserted or reordered entry breaks the
chain at that link. A process start begins a new chain: a fresh producer id, seq 0 and `prev_hash`
GENESIS_HASH. Exact duplicates of the previous entry (an at-least-once producer retry) are
tolerated. What a hash chain cannot show: entries cut off the end of a chain, or a whole chain
removed. Pure: no Kafka; the writer is given the send function.
"""
from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

import orjson

from schemas import SchemaError, parse_object
from schemas.units import NS_PER_S

GENESIS_HASH = "0" * 64
DIGEST_BYTES = 32


def canonical(data: Any) -> bytes:
    """The bytes that get hashed: orjson, keys sorted, no whitespace, sets as sorted lists."""
    return orjson.dumps(data, default=_sorted_set, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)


def _sorted_set(value: Any) -> list:
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"cannot hash a {type(value).__name__}")


def digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=DIGEST_BYTES).hexdigest()


def config_hash(*configs: Any) -> str:
    """Hash of configuration dataclasses (their fields, canonically encoded)."""
    return digest(canonical([asdict(c) for c in configs]))


def entry_hash(producer: str, seq: int, prev_hash: str, payload: dict[str, Any]) -> str:
    body = canonical({"producer": producer, "seq": seq, "payload": payload})
    return digest(prev_hash.encode("ascii") + body)


@dataclass(frozen=True, slots=True)
class AuditEntry:
    seq: int
    producer: str
    prev_hash: str
    hash: str
    payload: dict[str, Any]

    def encode(self) -> bytes:
        return orjson.dumps(self)

    @property
    def expected_hash(self) -> str:
        return entry_hash(self.producer, self.seq, self.prev_hash, self.payload)


def decode_entry(data: bytes) -> AuditEntry:
    obj = parse_object(data)
    fields = {"seq": int, "producer": str, "prev_hash": str, "hash": str, "payload": dict}
    for name, kind in fields.items():
        value = obj.get(name)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise SchemaError("bad_audit_entry", f"{name} must be {kind.__name__}")
    return AuditEntry(obj["seq"], obj["producer"], obj["prev_hash"], obj["hash"], obj["payload"])


class AuditChain:
    """One producer's chain: appends entries, each linked to the one before."""

    def __init__(self, producer: str, prev_hash: str = GENESIS_HASH, next_seq: int = 0) -> None:
        self.producer, self.prev_hash, self.next_seq = producer, prev_hash, next_seq

    def append(self, payload: dict[str, Any]) -> AuditEntry:
        h = entry_hash(self.producer, self.next_seq, self.prev_hash, payload)
        entry = AuditEntry(self.next_seq, self.producer, self.prev_hash, h, payload)
        self.prev_hash, self.next_seq = h, self.next_seq + 1
        return entry


def new_producer_id(role: str) -> str:
    """Unique per process start: `role@host/pid-random`."""
    return f"{role}@{socket.gethostname()}/{os.getpid()}-{uuid.uuid4().hex[:8]}"


class AuditWriter:
    """Appends and sends under one lock, so the topic holds each chain in order.

    `send(key, value)` enqueues a record and returns its delivery future (Faust's `topic.send`)."""

    def __init__(self, chain: AuditChain, send: Callable[[bytes, bytes], Awaitable[Any]]) -> None:
        self.chain, self._send = chain, send
        self._lock = asyncio.Lock()

    async def write(self, payload: dict[str, Any]) -> Any:
        async with self._lock:
            entry = self.chain.append(payload)
            return await self._send(entry.producer.encode(), entry.encode())


def request_payload(request: Any, *, window_s: int, config_digest: str) -> dict[str, Any]:
    """What an inference request was built from. The tick window is the features' long window:
    ticks in (ts_ns - window_s, ts_ns] (plus the last trade before it, the window's start price)."""
    return {"kind": "request", "forecast_id": request.id, "symbol": request.symbol, "ts_ns": request.ts_ns,
            "trigger": request.trigger, "window_start_ns": request.ts_ns - window_s * NS_PER_S,
            "window_end_ns": request.ts_ns, "news_ids": list(request.news_ids), "adapter": request.adapter,
            "config_hash": config_digest}


@dataclass(frozen=True, slots=True)
class BrokenLink:
    producer: str
    seq: int | None
    offset: int
    reason: str
    expected: str
    found: str

    def describe(self) -> str:
        return (f"broken link: producer {self.producer} seq {self.seq} at offset {self.offset}: {self.reason} "
                f"(expected {self.expected}, found {self.found})")


@dataclass(frozen=True, slots=True)
class ChainReport:
    entries: int
    chains: dict[str, int]     # producer -> entries in its chain
    duplicates: int            # exact re-sends of the previous entry, tolerated
    broken: BrokenLink | None

    @property
    def intact(self) -> bool:
        return self.broken is None


def verify_chain(records: Iterable[tuple[int, bytes | None]]) -> ChainReport:
    """Check every producer's chain over `(offset, value)` records in topic order; stop at the first
    broken link (a malformed record, a seq out of order, a wrong prev_hash, or a wrong hash)."""
    heads: dict[str, AuditEntry] = {}
    counts: dict[str, int] = {}
    entries = duplicates = 0
    for offset, value in records:
        entries += 1
        try:
            entry = decode_entry(value or b"")
        except SchemaError as error:
            return ChainReport(entries, counts, duplicates, BrokenLink("?", None, offset, "malformed entry",
                                                                       "an audit entry", error.reason))
        head = heads.get(entry.producer)
        if head is not None and entry == head:
            duplicates += 1
            continue
        broken = check_link(head, entry, offset)
        if broken is not None:
            return ChainReport(entries, counts, duplicates, broken)
        heads[entry.producer] = entry
        counts[entry.producer] = counts.get(entry.producer, 0) + 1
    return ChainReport(entries, counts, duplicates, None)


def check_link(head: AuditEntry | None, entry: AuditEntry, offset: int) -> BrokenLink | None:
    """Whether `entry` follows `head` (None: it must start a chain)."""
    want_seq, want_prev = (0, GENESIS_HASH) if head is None else (head.seq + 1, head.hash)
    for reason, expected, found in (("seq out of order (entry missing or moved)", want_seq, entry.seq),
                                    ("prev_hash does not match the previous entry", want_prev, entry.prev_hash),
                                    ("hash does not match the entry", entry.expected_hash, entry.hash)):
        if expected != found:
            return BrokenLink(entry.producer, entry.seq, offset, reason, str(expected), str(found))
    return None
