"""`finllm audit verify`: read the whole `audit` topic and check every producer's hash chain.

Exit status 0 when every chain is intact, 1 naming the first broken link, 2 when the topic is missing.
Reads from the beginning until no record has come for `--idle-s` (Tansu's end offsets are not
reliable, so the end is where the topic goes quiet).
"""
from __future__ import annotations

import asyncio
import sys
import time
from typing import TYPE_CHECKING

import click
import orjson

from agents.cli.options import bootstrap_option, kafka_settings

if TYPE_CHECKING:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from agents.audit import ChainReport
    from streams.settings import KafkaSettings

FETCH_TIMEOUT_MS = 100


class MissingTopicError(RuntimeError):
    pass


async def read_topic(kafka: KafkaSettings, topic: str, *, idle_s: float) -> list[tuple[int, bytes | None]]:
    """Every record of `topic` as (offset, value), partition after partition, each in offset order."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(**kafka.client_kwargs(), group_id=None, enable_auto_commit=False,
                                auto_offset_reset="earliest")
    await consumer.start()
    try:
        if topic not in await consumer.topics():  # asks for every topic: names none, so creates none
            raise MissingTopicError(f"topic {topic!r} does not exist")
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        return await _drain(consumer, parts, idle_s)
    finally:
        await consumer.stop()


async def _drain(consumer: AIOKafkaConsumer, parts: list[TopicPartition],
                 idle_s: float) -> list[tuple[int, bytes | None]]:
    by_part: dict[TopicPartition, list[tuple[int, bytes | None]]] = {tp: [] for tp in parts}
    quiet_since = time.monotonic()
    while time.monotonic() - quiet_since < idle_s:
        batch = await consumer.getmany(timeout_ms=FETCH_TIMEOUT_MS)
        for tp, records in batch.items():
            by_part[tp] += [(r.offset, r.value) for r in records]
            quiet_since = time.monotonic()
    return [row for tp in parts for row in by_part[tp]]


def summary(report: ChainReport) -> dict:
    out = {"intact": report.intact, "entries": report.entries, "chains": len(report.chains),
           "duplicates": report.duplicates}
    if report.broken is not None:
        out["broken"] = {"producer": report.broken.producer, "seq": report.broken.seq,
                         "offset": report.broken.offset, "reason": report.broken.reason,
                         "expected": report.broken.expected, "found": report.broken.found}
    return out


@click.group()
def audit() -> None:
    """The audit trail: a hash chain of every forecast's inputs on the `audit` topic."""


@audit.command()
@bootstrap_option()
@click.option("--idle-s", default=1.0, show_default=True, help="The topic's end: this long without records.")
def verify(bootstrap: str | None, idle_s: float) -> None:
    """Check every chain on the audit topic; exit 1 naming the first broken link."""
    from agents.audit import verify_chain

    kafka = kafka_settings(bootstrap)
    try:
        records = asyncio.run(read_topic(kafka, kafka.topics.audit, idle_s=idle_s))
    except MissingTopicError as error:
        click.echo(f"audit: {error}", err=True)
        sys.exit(2)
    report = verify_chain(records)
    click.echo(orjson.dumps(summary(report)).decode())
    if report.broken is not None:
        click.echo(report.broken.describe(), err=True)
        sys.exit(1)
