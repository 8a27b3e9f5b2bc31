"""Per-request block tables over the `BlockPool`, with prefix caching. No torch.

Prefix caching: every full block is named by a chained hash of (parent hash, adapter,
its token ids), so a hit means the whole prefix and the adapter match. A request freed
with its computed tokens ending mid-block leaves that block as a partial entry named by
what precedes it; a later request whose tokens go on from the same full blocks with the
same first tokens takes the block over and writes its own tokens after them (a warm-up
of a prompt's head saves the head's last partial block). The scheduler asks
`can_allocate` and then calls `allocate`; policy stays in the scheduler.
"""
from __future__ import annotations

import hashlib
from array import array
from dataclasses import dataclass

from inference.engine.block_pool import BlockPool
from inference.engine.sequence import Request


def hash_block(parent_hash: bytes, adapter_key: str, token_ids: list[int]) -> bytes:
    digest = hashlib.blake2b(parent_hash, digest_size=16)
    digest.update(adapter_key.encode())
    digest.update(array("q", token_ids).tobytes())
    return digest.digest()


def adapter_key(request: Request) -> str:
    return "" if request.adapter is None else f"{request.adapter}@{request.adapter_version}"


def partial_key(parent_hash: bytes, adapter: str) -> bytes:
    """Names a partial block by the full blocks before it, hashing the adapter in again
    because an empty chain (a partial first block) does not name it."""
    return hash_block(parent_hash, adapter, [])


@dataclass(frozen=True, slots=True)
class CachedPrefix:
    """What an admitted request starts from: shared full blocks, maybe a taken-over partial
    block last; `num_tokens` counts the tokens they hold, `full_hash` names the full blocks."""

    blocks: tuple[int, ...] = ()
    num_tokens: int = 0
    full_hash: bytes = b""


NO_PREFIX = CachedPrefix()


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

    def find_cached_prefix(self, request: Request) -> CachedPrefix:
        """The longest cached prefix, leaving at least one token to compute."""
        if not self.enable_prefix_caching:
            return NO_PREFIX
        bs, tokens, key = self.block_size, request.token_ids, adapter_key(request)
        blocks: list[int] = []
        parent = b""
        for i in range((request.num_tokens - 1) // bs):
            block_hash = hash_block(parent, key, tokens[i * bs:(i + 1) * bs])
            block_id = self.pool.lookup(block_hash)
            if block_id is None:
                break
            blocks.append(block_id)
            parent = block_hash
        start = len(blocks) * bs
        partial = self.pool.lookup_partial(partial_key(parent, key))
        if partial is not None:
            end = start + len(partial.token_ids)
            if end < request.num_tokens and tokens[start:end] == list(partial.token_ids):
                return CachedPrefix((*blocks, partial.block_id), end, parent)
        return CachedPrefix(tuple(blocks), start, parent)

    def record_prefix_query(self, request: Request, cached: CachedPrefix) -> None:
        self.prefix_query_tokens += request.num_tokens
        self.prefix_hit_tokens += cached.num_tokens

    def num_new_blocks(self, request: Request, num_new_tokens: int, cached: CachedPrefix = NO_PREFIX) -> int:
        held = len(self.block_table(request.request_id)) + len(cached.blocks)
        total = request.num_computed_tokens + cached.num_tokens + num_new_tokens
        return max(self.num_blocks_for(total) - held, 0)

    def can_allocate(self, request: Request, num_new_tokens: int, cached: CachedPrefix = NO_PREFIX) -> bool:
        reclaimed = sum(1 for b in cached.blocks if self.pool.ref_counts[b] == 0)
        needed = self.num_new_blocks(request, num_new_tokens, cached)
        return needed <= self.pool.num_free - reclaimed

    def allocate(self, request: Request, num_new_tokens: int, cached: CachedPrefix = NO_PREFIX) -> None:
        """Give the request blocks for `num_new_tokens` more tokens after its cached prefix."""
        needed = self.num_new_blocks(request, num_new_tokens, cached)
        table = self.block_tables.setdefault(request.request_id, [])
        if cached.blocks:
            self.pool.touch(list(cached.blocks))
            table.extend(cached.blocks)
            self.hashed_prefix[request.request_id] = (cached.num_tokens // self.block_size, cached.full_hash)
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
        """Release every block of the request, tail first so prefix blocks stay cached longest.

        Computed tokens ending mid-block leave that block as a partial entry, if the full
        blocks before it are named (else no lookup could reach it). `num_computed_tokens`,
        not `num_tokens`: a generation's last sampled token has no KV yet.
        """
        table = self.block_tables.pop(request.request_id, [])
        num_hashed, parent = self.hashed_prefix.pop(request.request_id, (0, b""))
        num_full, num_partial = divmod(request.num_computed_tokens, self.block_size)
        if self.enable_prefix_caching and num_partial and num_hashed == num_full < len(table):
            tokens = request.token_ids[num_full * self.block_size:request.num_computed_tokens]
            self.pool.cache_partial(table[num_full], partial_key(parent, adapter_key(request)), tokens)
        self.pool.release(list(reversed(table)))
