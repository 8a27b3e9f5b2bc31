"""Topic administration against the real embedded broker."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from streams.admin import TopicAdminError, describe_partitions, ensure_topics

pytestmark = pytest.mark.integration


async def _list_topics(bootstrap: str) -> set[str]:
    client = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await client.start()
    try:
        return set(await client.list_topics())
    finally:
        await client.close()


def test_ensure_topics_creates_each_with_its_partition_count(
    kafka_bootstrap: str, topic_prefix: str,
) -> None:
    topics = {f"{topic_prefix}ticks": 4, f"{topic_prefix}news": 1, f"{topic_prefix}out": 3}
    asyncio.run(ensure_topics(kafka_bootstrap, topics))
    for name, count in topics.items():
        assert asyncio.run(describe_partitions(kafka_bootstrap, name)) == count


def test_ensure_topics_is_idempotent(kafka_bootstrap: str, topic_prefix: str) -> None:
    topics = {f"{topic_prefix}a": 2}
    asyncio.run(ensure_topics(kafka_bootstrap, topics))
    asyncio.run(ensure_topics(kafka_bootstrap, topics))
    assert asyncio.run(describe_partitions(kafka_bootstrap, f"{topic_prefix}a")) == 2


def test_concurrent_ensure_of_the_same_topic_both_succeed(
    kafka_bootstrap: str, topic_prefix: str,
) -> None:
    topics = {f"{topic_prefix}shared": 3}

    async def twice() -> None:
        await asyncio.gather(*(ensure_topics(kafka_bootstrap, topics) for _ in range(2)))

    asyncio.run(twice())
    assert asyncio.run(describe_partitions(kafka_bootstrap, f"{topic_prefix}shared")) == 3


def test_wrong_partition_count_raises(kafka_bootstrap: str, topic_prefix: str) -> None:
    asyncio.run(ensure_topics(kafka_bootstrap, {f"{topic_prefix}x": 2}))
    with pytest.raises(TopicAdminError, match=r"x: wants 5 partitions, has 2"):
        asyncio.run(ensure_topics(kafka_bootstrap, {f"{topic_prefix}x": 5}))


def test_zero_partitions_is_rejected_before_touching_the_broker(
    kafka_bootstrap: str, topic_prefix: str,
) -> None:
    with pytest.raises(TopicAdminError, match=">= 1"):
        asyncio.run(ensure_topics(kafka_bootstrap, {f"{topic_prefix}z": 0}))
    assert f"{topic_prefix}z" not in asyncio.run(_list_topics(kafka_bootstrap))


def test_describe_of_a_missing_topic_raises_and_does_not_create_it(
    kafka_bootstrap: str, topic_prefix: str,
) -> None:
    missing = f"{topic_prefix}missing"
    with pytest.raises(TopicAdminError, match="does not exist"):
        asyncio.run(describe_partitions(kafka_bootstrap, missing))
    assert missing not in asyncio.run(_list_topics(kafka_bootstrap))
