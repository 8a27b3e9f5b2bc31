"""Physical KV blocks: reference counts, a free queue in eviction order, a hash->block map.

No torch. A block with ref count 0 sits in the free queue; if it still carries a hash
its KV stays reusable until the block is handed out again (then the hash is dropped).
A freed request's last, partly filled block may likewise stay reusable as a partial
entry (key -> block and its token ids). Such a block is held by no-one: the entry is made
as its owner frees it and dropped as soon as the block leaves the free queue, either
taken over whole by one new request (`touch`) or handed out (`allocate`).
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class PartialBlock:
    block_id: int
    token_ids: tuple[int, ...]


class BlockPool:
    def __init__(self, num_blocks: int) -> None:
        self.num_blocks = num_blocks
        self.ref_counts = [0] * num_blocks
        self.block_hashes: list[bytes | None] = [None] * num_blocks
        self.cached_block_of: dict[bytes, int] = {}
        self.partial_of: dict[bytes, PartialBlock] = {}
        self.partial_key_of: dict[int, bytes] = {}   # block -> its key in `partial_of`
        self.free_queue: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))
        self.num_evictions = 0

    @property
    def num_free(self) -> int:
        return len(self.free_queue)

    @property
    def num_used(self) -> int:
        return self.num_blocks - len(self.free_queue)

    def lookup(self, block_hash: bytes) -> int | None:
        return self.cached_block_of.get(block_hash)

    def lookup_partial(self, key: bytes) -> PartialBlock | None:
        return self.partial_of.get(key)

    def allocate(self, num_blocks: int) -> list[int]:
        """Hand out `num_blocks` blocks from the head of the free queue (ref count 1)."""
        if num_blocks > len(self.free_queue):
            raise RuntimeError(f"asked for {num_blocks} blocks, {len(self.free_queue)} free")
        block_ids = []
        for _ in range(num_blocks):
            block_id, _ = self.free_queue.popitem(last=False)
            self._evict(block_id)
            self.ref_counts[block_id] = 1
            block_ids.append(block_id)
        return block_ids

    def touch(self, block_ids: list[int]) -> None:
        """Take another reference to blocks found in the prefix cache (a partial one is taken over)."""
        for block_id in block_ids:
            if self.ref_counts[block_id] == 0:
                del self.free_queue[block_id]
                self._drop_partial(block_id)
            self.ref_counts[block_id] += 1

    def release(self, block_ids: list[int]) -> None:
        """Drop one reference each; blocks reaching zero join the free queue in the given order.

        Hashed and partial blocks go to the tail (evicted last); plain ones to the head (reused first).
        """
        for block_id in block_ids:
            self.ref_counts[block_id] -= 1
            if self.ref_counts[block_id] < 0:
                raise RuntimeError(f"block {block_id} released more often than taken")
            if self.ref_counts[block_id] == 0:
                self.free_queue[block_id] = None
                if self.block_hashes[block_id] is None and block_id not in self.partial_key_of:
                    self.free_queue.move_to_end(block_id, last=False)

    def cache(self, block_id: int, block_hash: bytes) -> None:
        """Record that `block_id` holds the full block named `block_hash` (first writer wins)."""
        if block_hash in self.cached_block_of or self.block_hashes[block_id] is not None:
            return
        self.block_hashes[block_id] = block_hash
        self.cached_block_of[block_hash] = block_id

    def cache_partial(self, block_id: int, key: bytes, token_ids: list[int]) -> None:
        """Keep `block_id`, about to be released, reusable as the partial block under `key`.

        One entry per key: the one with more tokens wins, the newer on a tie (it was used
        last). The loser becomes a plain free block, reused first.
        """
        old = self.partial_of.get(key)
        if old is not None:
            if len(old.token_ids) > len(token_ids):
                return
            self._drop_partial(old.block_id)
            self.free_queue.move_to_end(old.block_id, last=False)
        self.partial_of[key] = PartialBlock(block_id, tuple(token_ids))
        self.partial_key_of[block_id] = key

    def _evict(self, block_id: int) -> None:
        """Forget what a block handed out again held: its full hash or its partial entry."""
        block_hash = self.block_hashes[block_id]
        if block_hash is not None:
            self.block_hashes[block_id] = None
            del self.cached_block_of[block_hash]
        if block_hash is not None or self._drop_partial(block_id):
            self.num_evictions += 1

    def _drop_partial(self, block_id: int) -> bool:
        key = self.partial_key_of.pop(block_id, None)
        if key is not None:
            del self.partial_of[key]
        return key is not None
