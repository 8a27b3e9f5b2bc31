"""Topic administration: create the topics a pipeline needs, check their shape.

Tansu 0.6 (memory storage) auto-creates any topic a client asks metadata for,
with 4 partitions, and that includes a describe of a missing topic. So every
topic is created explicitly before use, and existence is checked with a topic
list (which creates nothing) before anything is described.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

_TOPIC_ALREADY_EXISTS = TopicAlreadyExistsError.errno


class TopicAdminError(RuntimeError):
    """A topic is missing, has the wrong partition count, or failed to create."""


@asynccontextmanager
async def _admin_client(bootstrap: str, timeout_s: float) -> AsyncIterator[AIOKafkaAdminClient]:
    client = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000))
    await client.start()
    try:
        yield client
    finally:
        await client.close()


async def ensure_topics(
    bootstrap: str,
    topics: dict[str, int],
    *,
    replication: int = 1,
    timeout_s: float = 30,
) -> None:
    """Create each missing topic with its partition count; idempotent.

    `topics` maps topic name to partition count. A topic that already exists
    with another partition count raises TopicAdminError.
    """
    _check_partition_counts(topics)
    async with asyncio.timeout(timeout_s):
        async with _admin_client(bootstrap, timeout_s) as client:
            existing = set(await client.list_topics())
            missing = {name: n for name, n in topics.items() if name not in existing}
            await _create_topics(client, missing, replication, timeout_s)
            actual = await _partition_counts(client, list(topics))
    _check_counts_match(topics, actual)


async def describe_partitions(bootstrap: str, topic: str, *, timeout_s: float = 30) -> int:
    """Partition count of an existing topic; raises TopicAdminError if missing."""
    async with asyncio.timeout(timeout_s):
        async with _admin_client(bootstrap, timeout_s) as client:
            if topic not in set(await client.list_topics()):
                raise TopicAdminError(f"topic {topic!r} does not exist")
            counts = await _partition_counts(client, [topic])
    return counts[topic]


def _check_partition_counts(topics: dict[str, int]) -> None:
    bad = {name: n for name, n in topics.items() if n < 1}
    if bad:
        raise TopicAdminError(f"partition counts must be >= 1, got {bad}")


async def _create_topics(
    client: AIOKafkaAdminClient, topics: dict[str, int], replication: int, timeout_s: float,
) -> None:
    if not topics:
        return
    new_topics = [NewTopic(name, n, replication) for name, n in topics.items()]
    response = await client.create_topics(new_topics, timeout_ms=int(timeout_s * 1000))
    failures = [
        f"{name}: error {code} {message}"
        for name, code, message in response.topic_errors
        if code not in (0, _TOPIC_ALREADY_EXISTS)  # a concurrent creator won
    ]
    if failures:
        raise TopicAdminError("could not create topics: " + "; ".join(failures))


async def _partition_counts(client: AIOKafkaAdminClient, topics: list[str]) -> dict[str, int]:
    """Partition count per topic; call only with topics known to exist."""
    descriptions = await client.describe_topics(topics)
    counts = {}
    for description in descriptions:
        if description["error_code"] != 0:
            raise TopicAdminError(
                f"describe {description['topic']!r} failed: error {description['error_code']}")
        counts[description["topic"]] = len(description["partitions"])
    return counts


def _check_counts_match(wanted: dict[str, int], actual: dict[str, int]) -> None:
    wrong = [
        f"{name}: wants {count} partitions, has {actual[name]}"
        for name, count in wanted.items()
        if actual[name] != count
    ]
    if wrong:
        raise TopicAdminError("topics exist with the wrong partition count: " + "; ".join(wrong))
