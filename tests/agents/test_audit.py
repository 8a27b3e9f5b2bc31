"""The audit hash chain: building, verification, tampering found at the right link, and
`finllm audit verify` against the real broker."""
import asyncio
import os
import subprocess
import sys

import orjson
import pytest

from agents.audit import (GENESIS_HASH, AuditChain, AuditEntry, AuditWriter, config_hash, decode_entry,
                          request_payload, verify_chain)
from agents.config import AgentsConfig
from schemas import InferenceRequest, Probs
from streams.admin import ensure_topics
from streams.producer import make_producer
from streams.settings import KafkaSettings
from streams.topics import Topics

FINLLM = [sys.executable, "-m", "agents.cli"]


def build(producer: str, n: int) -> list[AuditEntry]:
    chain = AuditChain(producer)
    return [chain.append({"kind": "request", "forecast_id": f"f{i}", "news_ids": [f"n{i}"]}) for i in range(n)]


def records(entries: list[AuditEntry]) -> list[tuple[int, bytes]]:
    return [(offset, e.encode()) for offset, e in enumerate(entries)]


def interleaved() -> list[AuditEntry]:
    a, b = build("a", 5), build("b", 5)
    return [e for pair in zip(a, b) for e in pair]


def test_chain_links_each_entry_to_the_one_before():
    entries = build("p", 3)
    assert entries[0].prev_hash == GENESIS_HASH and [e.seq for e in entries] == [0, 1, 2]
    assert entries[1].prev_hash == entries[0].hash and entries[2].prev_hash == entries[1].hash
    assert all(e.hash == e.expected_hash for e in entries)
    assert decode_entry(entries[2].encode()) == entries[2]


def test_intact_interleaved_chains_verify_per_producer():
    report = verify_chain(records(interleaved()))
    assert report.intact and report.entries == 10 and report.chains == {"a": 5, "b": 5}


def test_exact_resend_of_the_previous_entry_is_tolerated():
    entries = build("p", 3)
    report = verify_chain(records(entries[:2] + [entries[1]] + entries[2:]))
    assert report.intact and report.duplicates == 1


def test_changed_payload_breaks_at_that_entry():
    entries = interleaved()
    tampered = AuditEntry(entries[4].seq, "a", entries[4].prev_hash, entries[4].hash,
                          entries[4].payload | {"news_ids": ["forged"]})
    broken = verify_chain(records(entries[:4] + [tampered] + entries[5:])).broken
    assert (broken.producer, broken.seq, broken.offset) == ("a", 2, 4) and broken.reason.startswith("hash")
    assert broken.found == entries[4].hash and broken.expected == tampered.expected_hash


def test_rehashed_forgery_breaks_at_the_next_link():
    entries = build("p", 4)
    forged_payload = entries[1].payload | {"adapter": "forged"}
    forged = AuditChain("p", entries[0].hash, 1).append(forged_payload)
    broken = verify_chain(records([entries[0], forged] + entries[2:])).broken
    assert (broken.seq, broken.offset) == (2, 2) and broken.reason.startswith("prev_hash")
    assert broken.expected == forged.hash and broken.found == entries[1].hash


def test_deleted_entry_breaks_at_the_one_after_the_gap():
    entries = interleaved()
    broken = verify_chain(records(entries[:5] + entries[6:])).broken  # b's seq 2 removed
    assert (broken.producer, broken.seq, broken.offset) == ("b", 3, 6)
    assert (broken.expected, broken.found) == ("2", "3")


def test_reordered_entries_break_at_the_first_out_of_place():
    entries = build("p", 5)
    broken = verify_chain(records([entries[0], entries[2], entries[1], entries[3], entries[4]])).broken
    assert (broken.seq, broken.offset) == (2, 1) and (broken.expected, broken.found) == ("1", "2")


def test_missing_first_entry_and_malformed_record_are_broken_links():
    entries = build("p", 3)
    assert verify_chain(records(entries[1:])).broken.seq == 1
    broken = verify_chain([(0, entries[0].encode()), (1, b"{not json")]).broken
    assert (broken.offset, broken.reason) == (1, "malformed entry")


def test_request_payload_records_window_news_adapter_and_config():
    cfg = AgentsConfig()
    request = InferenceRequest("fid", "ACME", 1_700_000_000 * 10**9, 60, "news", "p", Probs(0.3, 0.3, 0.4),
                               ("n1", "n2"), "lora-a", 1, 2, 3)
    payload = request_payload(request, window_s=cfg.long_window_s, config_digest=config_hash(cfg))
    assert payload["window_end_ns"] - payload["window_start_ns"] == 300 * 10**9
    assert payload["news_ids"] == ["n1", "n2"] and payload["adapter"] == "lora-a"
    assert payload["config_hash"] == config_hash(AgentsConfig()) != config_hash(AgentsConfig(cadence_s=30))


def test_writer_sends_in_chain_order_under_concurrency():
    sent: list[bytes] = []

    async def send(key: bytes, value: bytes) -> None:
        await asyncio.sleep(0.001 * (len(sent) % 3))  # later sends may finish first without the lock
        sent.append(value)

    async def main() -> None:
        writer = AuditWriter(AuditChain("p"), send)
        await asyncio.gather(*(writer.write({"i": i}) for i in range(20)))

    asyncio.run(main())
    assert verify_chain(list(enumerate(sent))).intact


def finllm_audit(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(FINLLM + ["audit", "verify", "--idle-s", "0.5"], capture_output=True, text=True,
                          timeout=60, env=dict(os.environ, **env))


async def produce(kafka: KafkaSettings, entries: list[AuditEntry]) -> None:
    producer = make_producer(kafka)
    await producer.start()
    try:
        for entry in entries:
            await producer.send_and_wait(kafka.topics.audit, entry.encode(), key=entry.producer.encode())
    finally:
        await producer.stop()


@pytest.mark.integration
def test_finllm_audit_verify_against_the_broker(kafka_bootstrap, topic_prefix):
    kafka = KafkaSettings(kafka_bootstrap, Topics(topic_prefix, 1))
    env = {"FINLLM_KAFKA_BOOTSTRAP": kafka_bootstrap, "FINLLM_TOPIC_PREFIX": topic_prefix}
    assert finllm_audit(env).returncode == 2  # no topic yet
    asyncio.run(ensure_topics(kafka_bootstrap, {kafka.topics.audit: 1}))
    entries = interleaved()
    asyncio.run(produce(kafka, entries))
    done = finllm_audit(env)
    assert done.returncode == 0, done.stderr
    assert orjson.loads(done.stdout) == {"intact": True, "entries": 10, "chains": 2, "duplicates": 0}

    last_a = entries[-2]
    forged = AuditEntry(last_a.seq + 1, "a", last_a.hash, "f" * 64, {"kind": "request", "forecast_id": "x"})
    asyncio.run(produce(kafka, [forged]))
    done = finllm_audit(env)
    assert done.returncode == 1
    assert "producer a seq 5 at offset 10" in done.stderr and "hash does not match" in done.stderr
    assert orjson.loads(done.stdout)["broken"]["offset"] == 10
