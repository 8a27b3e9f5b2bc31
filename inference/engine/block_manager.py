"""Per-request block tables over the `BlockPool`, with prefix caching. No torch.

Prefix caching: every full block is named by a chained hash of (parent hash, adapter,
its token ids), so a hit means the whole prefix and the adapter match. The scheduler
asks `can_allocate` and then calls `allocate`; policy stays in the scheduler.
"""
from __future__ import annotations

import hashlib
from array import array

from inference.engine.block_pool import BlockPool
from inference.engine.sequence import Request


def hash_block(parent_hash: bytes, adapter_key: str, token_ids: list[int]) -> bytes:
    digest = hashlib.blake2b(parent_hash, digest_size=16)
    digest.update(adapter_key.encode())
    digest.update(array("q", token_ids).tobytes())
    return digest.digest()


def adapter_key(request: Request) -> str:
    return "" if request.adapter is None else f"{request.adapter}@{request.adapter_version}"


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True) -> None:
        self.pool = BlockPool(num_blocks)
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.block_tables: dict[str, list[int]] = {}
        self.hashed_prefix: dict[str, tuple[int, bytes]] = {}  # request -> (num blocks, last hash)
        self.prefix_query_tokens = 0
        self.prefix_hit_tokens = 0

    def block_table(self, request_id: str) -> list[int]:
        return self.block_tables.get(request_id, [])

    def num_blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def find_cached_prefix(self, request: Request) -> list[int]:
        """Blocks holding the longest cached prefix, leaving at least one token to compute."""
        if not self.enable_prefix_caching:
            return []
        max_blocks = (request.num_tokens - 1) // self.block_size
        tokens, key, parent = request.token_ids, adapter_key(request), b""
        found: list[int] = []
        for i in range(max_blocks):
            parent = hash_block(parent, key, tokens[i * self.block_size:(i + 1) * self.block_size])
            block_id = self.pool.lookup(parent)
            if block_id is None:
                break
            found.append(block_id)
        return found

    def record_prefix_query(self, request: Request, cached_blocks: list[int]) -> None:
        self.prefix_query_tokens += request.num_tokens
        self.prefix_hit_tokens += len(cached_blocks) * self.block_size

    def num_new_blocks(self, request: Request, num_new_tokens: int, cached_blocks: list[int]) -> int:
        held = len(self.block_table(request.request_id)) + len(cached_blocks)
        total = request.num_computed_tokens + len(cached_blocks) * self.block_size + num_new_tokens
        return max(self.num_blocks_for(total) - held, 0)

    def can_allocate(self, request: Request, num_new_tokens: int, cached_blocks: list[int] = ()) -> bool:
        reclaimed = sum(1 for b in cached_blocks if self.pool.ref_counts[b] == 0)
        needed = self.num_new_blocks(request, num_new_tokens, list(cached_blocks))
        return needed <= self.pool.num_free - reclaimed

    def allocate(self, request: Request, num_new_tokens: int, cached_blocks: list[int] = ()) -> None:
        """Give the request blocks for `num_new_tokens` more tokens after its cached prefix."""
        cached_blocks = list(cached_blocks)
        needed = self.num_new_blocks(request, num_new_tokens, cached_blocks)
        table = self.block_tables.setdefault(request.request_id, [])
        if cached_blocks:
            self.pool.touch(cached_blocks)
            table.extend(cached_blocks)
            self.hashed_prefix[request.request_id] = (len(cached_blocks), self._chain_hash(request, len(cached_blocks)))
        table.extend(self.pool.allocate(needed))

    def cache_full_blocks(self, request: Request) -> None:
        """Name the request's newly completed blocks so later requests can reuse them."""
        if not self.enable_prefix_caching:
            return
        done, parent = self.hashed_prefix.get(request.request_id, (0, b""))
        num_full = request.num_computed_tokens // self.block_size
        if num_full <= done:
            return
        tokens, key, table = request.token_ids, adapter_key(request), self.block_tables[request.request_id]
        for i in range(done, num_full):
            parent = hash_block(parent, key, tokens[i * self.block_size:(i + 1) * self.block_size])
            self.pool.cache(table[i], parent)
        self.hashed_prefix[request.request_id] = (num_full, parent)

    def free(self, request: Request) -> None:
        """Release every block of the request, tail first so prefix blocks stay cached longest."""
        table = self.block_tables.pop(request.request_id, [])
        self.hashed_prefix.pop(request.request_id, None)
        self.pool.release(list(reversed(table)))

    def _chain_hash(self, request: Request, num_blocks: int) -> bytes:
        tokens, key, parent = request.token_ids, adapter_key(request), b""
        for i in range(num_blocks):
            parent = hash_block(parent, key, tokens[i * self.block_size:(i + 1) * self.block_size])
        return parent
