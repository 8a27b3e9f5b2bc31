import random

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
    assert bm.find_cached_prefix(same) == [0]  # 2 full blocks, but the last token must be computed
    longer = make_request("c", list(range(8)) + [99])
    assert bm.find_cached_prefix(longer) == [0, 1]
    bm.allocate(longer, 1, [0, 1])
    assert bm.block_table("c") == [0, 1, 2]
    assert bm.pool.ref_counts[:3] == [2, 2, 1]


def test_prefix_hash_includes_adapter():
    bm = BlockManager(num_blocks=8, block_size=4)
    a = make_request("a", range(9), adapter="x")
    bm.allocate(a, 9)
    a.num_computed_tokens = 9
    bm.cache_full_blocks(a)
    assert bm.find_cached_prefix(make_request("b", range(9), adapter="x")) == [0, 1]
    assert bm.find_cached_prefix(make_request("c", range(9), adapter="y")) == []
    assert bm.find_cached_prefix(make_request("d", range(9))) == []


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
    assert bm.find_cached_prefix(make_request("c", range(5))) == [0]
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
    assert cached == [0, 1]
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
        num_new = request.num_tokens - len(cached) * 4
        if bm.can_allocate(request, num_new, cached):
            bm.allocate(request, num_new, cached)
            request.num_computed_tokens = request.num_tokens
            live.append(request)
    for request in live:
        bm.free(request)
    assert bm.pool.num_free == 64
    assert all(count == 0 for count in bm.pool.ref_counts)
    assert not bm.block_tables
