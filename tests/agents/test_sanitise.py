"""The news screen: policy from env, sanitised text, headline keys, and deduplication on real Redis
(and on the in-process LRU when Redis is down)."""
import asyncio
import time
import uuid

import pytest

from agents.news_dedup import NewsDedup, NewsScreen
from agents.news_policy import NewsPolicy
from agents.sanitise import LocalNewsScreen, LocalSeen, NewsRejected, headline_key, normalise_headline, screen
from schemas import NewsItem
from streams.embedded import EmbeddedRedis, ServiceConfig

T0_NS = 1_700_000_000 * 10**9
MIN_NS = 60 * 10**9


def news(news_id: str, headline: str, symbols=("ACME",), source="wire", minutes=0, body=None) -> NewsItem:
    return NewsItem(news_id, T0_NS + minutes * MIN_NS, source, headline, tuple(symbols), body)


def test_policy_from_env_and_credibility():
    policy = NewsPolicy.from_env({"FINLLM_NEWS_BLOCKED_SOURCES": "spam, rumours", "FINLLM_NEWS_CREDIBILITY":
                                  "wire:0.9,blog:0.2", "FINLLM_NEWS_UNKNOWN_WEIGHT": "0.4",
                                  "FINLLM_NEWS_DEDUP_TTL_S": "600"})
    assert policy.blocked_sources == {"spam", "rumours"} and policy.dedup_ttl_s == 600
    assert (policy.credibility("wire"), policy.credibility("blog"), policy.credibility("new")) == (0.9, 0.2, 0.4)
    assert policy.credibility("spam") == 0.0 and NewsPolicy.from_env({}) == NewsPolicy()
    with pytest.raises(ValueError):
        NewsPolicy.from_env({"FINLLM_NEWS_CREDIBILITY": "wire:1.5"})


@pytest.mark.parametrize("variant", ["UPDATE: Acme beats estimates", "BREAKING - Acme beats estimates!",
                                     "UPDATE 2-Acme beats estimates", "[Reuters] acme  beats estimates",
                                     "ACME: <b>Acme</b> beats estimates.", "$ACME - Acme beats estimates"])
def test_variants_of_one_headline_share_a_key(variant):
    assert headline_key(variant, ("ACME",)) == headline_key("Acme beats estimates", ("ACME",))


@pytest.mark.parametrize("headline", ["FED: rates unchanged", "Apple: earnings due", "US-China talks resume",
                                      "AI stocks rally"])
def test_text_that_is_no_tag_is_kept(headline):
    assert normalise_headline(headline, ("ACME",)) == "".join(c for c in headline.lower() if c.isalnum())


def test_screen_sanitises_caps_and_blocks():
    policy = NewsPolicy(blocked_sources=frozenset({"spam"}), max_headline_chars=20, max_body_chars=10)
    clean = screen(news("n1", "<i>Acme</i>\x07 beats &amp; raises guidance", body="<p>body text is long</p>"),
                   policy)
    assert clean.headline == "Acme beats & raises…" and clean.body == "body text…" and clean.source == "wire"
    with pytest.raises(NewsRejected) as blocked:
        screen(news("n2", "x", source="spam"), policy)
    with pytest.raises(NewsRejected) as empty:
        screen(news("n3", "<b></b> \x01"), policy)
    assert (blocked.value.reason, empty.value.reason) == ("blocked_source", "empty_headline")


def test_local_seen_is_bounded_and_keeps_the_newest():
    seen = LocalSeen(max_entries=3)
    for i in range(5):
        assert seen.seen_before([f"k{i}"], f"n{i}", 0, 1000) is None
    assert list(seen.entries) == ["k2", "k3", "k4"]
    assert seen.seen_before(["k4"], "other", 500, 1000) == "n4"


# A first item, its re-delivery, the same story from another source (overlapping symbols), the same
# story for other symbols, and the same story two hours later.
STORY = [news("a", "Acme beats estimates", ("ACME", "X")), news("a", "Acme beats estimates", ("ACME", "X")),
         news("b", "UPDATE: Acme beats estimates", ("X", "Y"), source="blog"),
         news("c", "Acme beats estimates", ("OTHER",)), news("d", "Acme beats estimates", ("ACME",), minutes=120)]


async def dedup_story(dedup: NewsDedup) -> list:
    return [await dedup.duplicate_of(item) for item in STORY]


EXPECTED = [None, None, "a", None, None]


@pytest.mark.integration
def test_dedup_on_redis(redis_url):
    async def main():
        dedup = NewsDedup.from_url(redis_url, 3600, prefix=f"t{uuid.uuid4().hex[:8]}.")
        try:
            assert await dedup_story(dedup) == EXPECTED
            other_process = NewsDedup.from_url(redis_url, 3600, prefix=dedup.prefix)   # shared through Redis
            assert await other_process.duplicate_of(news("e", "acme BEATS estimates", ("ACME",), minutes=121)) == "d"
            await other_process.close()
            ttl_s = await dedup.client.ttl(dedup.keys(news("a", "Acme beats estimates"))[0])
            assert dedup.degraded_checks == 0 and 3500 < ttl_s <= 3600
        finally:
            await dedup.close()
    asyncio.run(main())


def test_dedup_without_redis_degrades_to_the_lru_fast(tmp_path):
    async def main():
        with EmbeddedRedis(ServiceConfig(tmp_path)) as redis:
            dedup = NewsDedup.from_url(redis.url, 3600, retry_after_s=0.0)
            assert await dedup.duplicate_of(news("a", "Acme beats estimates")) is None
        started = time.monotonic()   # Redis is gone: answers come from the LRU, which saw "a"
        answers = [await dedup.duplicate_of(news("b", "Acme beats estimates")) for _ in range(3)]
        elapsed_s = time.monotonic() - started
        await dedup.close()
        return answers, elapsed_s, dedup
    answers, elapsed_s, dedup = asyncio.run(main())
    assert answers == ["a"] * 3 and dedup.degraded and dedup.degraded_checks == 3 and elapsed_s < 1.0
    assert asyncio.run(dedup_story(NewsDedup(None, 3600))) == EXPECTED


def test_a_redis_that_lost_its_keys_does_not_let_a_duplicate_through(redis_url):
    """Redis restarted empty (it keeps nothing on disk): the story this process saw is still known."""
    async def main():
        dedup = NewsDedup.from_url(redis_url, 3600, prefix=f"t{uuid.uuid4().hex[:8]}.")
        try:
            assert await dedup.duplicate_of(news("a", "Acme beats estimates")) is None
            await dedup.client.delete(*dedup.keys(news("a", "Acme beats estimates")))   # what a restart loses
            return await dedup.duplicate_of(news("b", "Acme beats estimates", minutes=1)), dedup.degraded_checks
        finally:
            await dedup.close()
    assert asyncio.run(main()) == ("a", 0)


def test_screen_rejects_duplicates_with_reason():
    async def main():
        screen_ = NewsScreen(NewsPolicy(), NewsDedup(None, 3600))
        first = await screen_.admit(news("a", "<b>Acme</b> beats"))
        with pytest.raises(NewsRejected) as dup:
            await screen_.admit(news("b", "Acme beats", source="blog"))
        return first, dup.value
    first, dup = asyncio.run(main())
    assert first.headline == "Acme beats" and dup.reason == "duplicate" and "'a'" in str(dup)


def test_local_screen_applies_the_same_rules():
    local = LocalNewsScreen(NewsPolicy(blocked_sources=frozenset({"spam"})))
    answers = []
    for item in STORY + [news("s", "Spam", source="spam")]:
        try:
            answers.append(local.admit(item).id)
        except NewsRejected as error:
            answers.append(error.reason)
    assert answers == ["a", "a", "duplicate", "c", "d", "blocked_source"]
