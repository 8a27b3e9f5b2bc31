import random
from collections import Counter

import pytest

from inference.engine.block_manager import BlockManager
from inference.engine.block_pool import BlockPool
from inference.engine.sequence import Request, RequestKind


def make_request(rid: str, tokens: list[int], adapter: str | None = None) -> Request:
    return Request(rid, list(tokens), RequestKind.SCORE, arrival_ns=0, adapter=adapter)


def test_pool_hands_out_blocks_in_order_and_refuses_overdraw():
    pool = BlockPool(4)
    assert pool.allocate(3) == [0, 1, 2]
    assert pool.num_free == 1
    with pytest.raises(RuntimeError):
        pool.allocate(2)


def test_pool_reuses_unhashed_blocks_before_cached_ones():
    pool = BlockPool(4)
    blocks = pool.allocate(4)
    pool.cache(blocks[0], b"h0")
    pool.release([blocks[0], blocks[1]])  # 0 hashed -> tail, 1 unhashed -> head
    assert list(pool.free_queue) == [1, 0]
    assert pool.allocate(1) == [1]
    assert pool.lookup(b"h0") == 0
    assert pool.allocate(1) == [0]
    assert pool.lookup(b"h0") is None
    assert pool.num_evictions == 1


def test_pool_double_release_is_an_error():
    pool = BlockPool(2)
    [block] = pool.allocate(1)
    pool.release([block])
    with pytest.raises(RuntimeError):
        pool.release([block])


def test_allocate_and_free_exact_block_ids():
    bm = BlockManager(num_blocks=8, block_size=4)
    a = make_request("a", range(10))
    bm.allocate(a, 10)
    assert bm.block_table("a") == [0, 1, 2]
    b = make_request("b", range(100, 105))
    bm.allocate(b, 5)
    assert bm.block_table("b") == [3, 4]
    bm.free(a)  # unhashed: head of the free queue, tail block first
    assert list(bm.pool.free_queue)[:3] == [0, 1, 2]
    assert bm.pool.num_free == 6


def test_prefix_hit_shares_blocks_and_keeps_last_token_to_compute():
    bm = BlockManager(num_blocks=8, block_size=4)
    a = make_request("a", range(8))
    bm.allocate(a, 8)
    a.num_computed_tokens = 8
    bm.cache_full_blocks(a)
    same = make_request("b", range(8))
    assert bm.find_cached_prefix(same).blocks == (0,)  # 2 full blocks, but the last token must be computed
    longer = make_request("c", list(range(8)) + [99])
    cached = bm.find_cached_prefix(longer)
    assert (cached.blocks, cached.num_tokens) == ((0, 1), 8)
    bm.allocate(longer, 1, cached)
    assert bm.block_table("c") == [0, 1, 2]
    assert bm.pool.ref_counts[:3] == [2, 2, 1]


def test_prefix_hash_includes_adapter():
    bm = BlockManager(num_blocks=8, block_size=4)
    a = make_request("a", range(9), adapter="x")
    bm.allocate(a, 9)
    a.num_computed_tokens = 9
    bm.cache_full_blocks(a)
    assert bm.find_cached_prefix(make_request("b", range(9), adapter="x")).blocks == (0, 1)
    assert bm.find_cached_prefix(make_request("c", range(9), adapter="y")).blocks == ()
    assert bm.find_cached_prefix(make_request("d", range(9))).blocks == ()


def test_cached_free_blocks_evicted_in_lru_order_tail_first():
    bm = BlockManager(num_blocks=4, block_size=2)
    a = make_request("a", range(4))
    bm.allocate(a, 4)
    a.num_computed_tokens = 4
    bm.cache_full_blocks(a)
    bm.free(a)
    assert list(bm.pool.free_queue) == [2, 3, 1, 0]
    b = make_request("b", range(50, 56))
    bm.allocate(b, 6)
    assert bm.block_table("b") == [2, 3, 1]
    assert bm.find_cached_prefix(make_request("c", range(5))).blocks == (0,)
    assert bm.pool.num_evictions == 1


def test_can_allocate_counts_reclaimed_cached_blocks():
    bm = BlockManager(num_blocks=3, block_size=2)
    a = make_request("a", range(4))
    bm.allocate(a, 4)
    a.num_computed_tokens = 4
    bm.cache_full_blocks(a)
    bm.free(a)
    c = make_request("c", range(7))  # hits 2 blocks, needs 2 more, only 1 truly free
    cached = bm.find_cached_prefix(c)
    assert cached.blocks == (0, 1)
    assert not bm.can_allocate(c, 3, cached)
    assert bm.can_allocate(c, 1, cached)


def test_thousands_of_random_requests_with_aborts_leave_every_block_free():
    rng = random.Random(0)
    bm = BlockManager(num_blocks=64, block_size=4)
    live: list[Request] = []
    for i in range(3000):
        if live and rng.random() < 0.5:
            request = live.pop(rng.randrange(len(live)))
            if rng.random() < 0.5:  # finish: maybe cache what was computed
                bm.cache_full_blocks(request)
            bm.free(request)
            continue
        tokens = [rng.randrange(4) for _ in range(rng.randrange(1, 20))]
        request = make_request(str(i), tokens, adapter=rng.choice([None, "x"]))
        cached = bm.find_cached_prefix(request)
        num_new = request.num_tokens - cached.num_tokens
        if bm.can_allocate(request, num_new, cached):
            bm.allocate(request, num_new, cached)
            request.num_computed_tokens = request.num_tokens
            live.append(request)
        assert_consistent(bm)
    for request in live:
        bm.free(request)
    assert bm.pool.num_free == 64
    assert all(count == 0 for count in bm.pool.ref_counts)
    assert not bm.block_tables


# partial blocks ---------------------------------------------------------------

HEAD = list(range(37))          # 2 full blocks of 16 and 5 tokens in a third


def assert_consistent(bm: BlockManager) -> None:
    """Free count, ref counts and partial entries agree with the block tables."""
    pool = bm.pool
    holders = Counter(b for table in bm.block_tables.values() for b in table)
    assert pool.num_free + len(holders) == pool.num_blocks
    assert all(pool.ref_counts[b] == holders[b] for b in range(pool.num_blocks))
    assert all((pool.ref_counts[b] == 0) == (b in pool.free_queue) for b in range(pool.num_blocks))
    assert all(pool.block_hashes[b] is not None for b, n in holders.items() if n > 1)  # only full blocks shared
    assert {p.block_id: key for key, p in pool.partial_of.items()} == pool.partial_key_of
    assert all(pool.ref_counts[b] == 0 and pool.block_hashes[b] is None for b in pool.partial_key_of)


def compute(bm: BlockManager, request: Request) -> Request:
    """Admit the request with its cached prefix and compute all its tokens."""
    cached = bm.find_cached_prefix(request)
    bm.allocate(request, request.num_tokens - cached.num_tokens, cached)
    request.num_computed_tokens = request.num_tokens
    bm.cache_full_blocks(request)
    return request


def warm(bm: BlockManager, tokens: list[int], adapter: str | None = None) -> list[int]:
    """Compute and free a warm-up request; return the blocks it held."""
    request = compute(bm, make_request(f"warm{len(bm.pool.partial_of)}", tokens, adapter))
    table = bm.block_table(request.request_id)
    bm.free(request)
    return table


def test_freed_head_leaves_its_last_partial_block_for_head_plus_tail():
    bm = BlockManager(num_blocks=8, block_size=16)
    assert warm(bm, HEAD) == [0, 1, 2]
    assert list(bm.pool.free_queue) == [3, 4, 5, 6, 7, 2, 1, 0]   # partial block evicted before its prefix
    request = make_request("r", HEAD + list(range(100, 120)))
    cached = bm.find_cached_prefix(request)
    assert (cached.blocks, cached.num_tokens) == ((0, 1, 2), 37)
    assert bm.num_new_blocks(request, 20, cached) == 1 and bm.can_allocate(request, 20, cached)
    bm.record_prefix_query(request, cached)
    assert bm.prefix_hit_tokens == 37
    bm.allocate(request, 20, cached)
    assert bm.block_table("r") == [0, 1, 2, 3] and not bm.pool.partial_of
    assert bm.pool.num_free == 4 and bm.pool.num_evictions == 0
    assert_consistent(bm)
    request.num_computed_tokens = 57
    bm.cache_full_blocks(request)  # block 2 is now full of the request's own tokens and named by them
    again = bm.find_cached_prefix(make_request("s", request.token_ids[:49]))
    assert (again.blocks, again.num_tokens) == ((0, 1, 2), 48)


def test_no_partial_hit_when_tokens_diverge_or_nothing_would_be_left_to_compute():
    bm = BlockManager(num_blocks=8, block_size=16)
    warm(bm, HEAD)
    for tokens in (HEAD[:34] + [999] * 10, HEAD[:36], HEAD):
        cached = bm.find_cached_prefix(make_request("r", tokens))
        assert (cached.blocks, cached.num_tokens) == ((0, 1), 32), tokens
    assert bm.find_cached_prefix(make_request("r", HEAD + [0])).num_tokens == 37


def test_partial_block_is_named_with_its_adapter_even_as_a_first_block():
    bm = BlockManager(num_blocks=8, block_size=16)
    warm(bm, HEAD, adapter="x")
    warm(bm, HEAD[:5], adapter="x")                     # a partial first block: no full block names it
    tail = list(range(200, 220))
    for tokens in (HEAD + tail, HEAD[:5] + tail):
        assert bm.find_cached_prefix(make_request("none", tokens)).blocks == ()
        assert bm.find_cached_prefix(make_request("y", tokens, adapter="y")).blocks == ()
    assert bm.find_cached_prefix(make_request("x", HEAD[:5] + tail, adapter="x")).num_tokens == 5
    assert bm.find_cached_prefix(make_request("x", HEAD + tail, adapter="x")).num_tokens == 37


def test_partial_entry_dropped_when_the_pool_hands_the_block_out():
    bm = BlockManager(num_blocks=8, block_size=16)
    warm(bm, HEAD)
    bm.allocate(make_request("fill", range(500, 596)), 96)  # 6 blocks: the 5 plain ones, then the partial
    assert bm.block_table("fill") == [3, 4, 5, 6, 7, 2]
    assert not bm.pool.partial_of and bm.pool.num_evictions == 1
    cached = bm.find_cached_prefix(make_request("r", HEAD + [1, 2, 3]))
    assert (cached.blocks, cached.num_tokens) == ((0, 1), 32)
    assert_consistent(bm)


def test_second_request_with_the_same_head_computes_the_partial_tokens_itself():
    bm = BlockManager(num_blocks=8, block_size=16)
    warm(bm, HEAD)
    first = compute(bm, make_request("a", HEAD + [1] * 20))
    second = make_request("b", HEAD + [2] * 20)
    cached = bm.find_cached_prefix(second)
    assert (cached.blocks, cached.num_tokens) == ((0, 1), 32)
    compute(bm, second)
    assert bm.block_table("a")[:3] == [0, 1, 2] and bm.block_table("b")[:2] == [0, 1]
    assert bm.block_table("b")[2] != 2 and bm.pool.ref_counts[2] == 1
    assert_consistent(bm)
    for request in (first, second):
        bm.free(request)
    assert_consistent(bm)
    assert bm.pool.num_free == 8


def test_one_partial_entry_per_key_the_longer_or_newer_wins():
    bm = BlockManager(num_blocks=8, block_size=16)
    [_, _, five] = warm(bm, HEAD)
    [_, _, three] = warm(bm, HEAD[:35])           # shorter: not kept, a plain free block reused first
    assert list(bm.pool.free_queue)[0] == three and three != five
    [_, _, other] = warm(bm, HEAD[:32] + [9] * 5)  # as long and newer: replaces the first
    assert [p.block_id for p in bm.pool.partial_of.values()] == [other]
    assert list(bm.pool.free_queue)[0] == five
    assert bm.find_cached_prefix(make_request("r", HEAD + [0])).num_tokens == 32
    assert bm.find_cached_prefix(make_request("r", HEAD[:32] + [9] * 6)).num_tokens == 37
    assert_consistent(bm)


def test_can_allocate_counts_a_reclaimed_partial_block():
    bm = BlockManager(num_blocks=4, block_size=16)
    warm(bm, HEAD)
    fits, too_long = make_request("a", HEAD + [1] * 27), make_request("b", HEAD + [1] * 28)
    for request, ok in ((fits, True), (too_long, False)):   # 3 held + 1 free block: 64 tokens
        cached = bm.find_cached_prefix(request)
        assert cached.num_tokens == 37
        assert bm.can_allocate(request, request.num_tokens - 37, cached) is ok


def test_generate_request_keeps_only_tokens_with_kv():
    bm = BlockManager(num_blocks=8, block_size=16)
    request = make_request("g", HEAD)
    compute(bm, request)
    request.append_token(77)                       # sampled, no KV yet
    bm.free(request)
    [partial] = bm.pool.partial_of.values()
    assert partial.token_ids == tuple(HEAD[32:])
