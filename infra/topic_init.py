"""Create the pipeline's topics (names and partitions from FINLLM_TOPIC_PREFIX / FINLLM_PARTITIONS).

The compose stack's `topic-init` job: `python /app/infra/topic_init.py`. Idempotent; retries while
the broker comes up (FINLLM_TOPIC_INIT_TIMEOUT_S, default 120), then exits 0, or 1 on failure.
"""
from __future__ import annotations

import asyncio
import os
import sys
import time

from streams.admin import ensure_topics
from streams.settings import KafkaSettings

RETRY_S = 2.0


async def create_topics(kafka: KafkaSettings, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            await ensure_topics(kafka.bootstrap, kafka.topics.all(), timeout_s=30)
            return
        except Exception as error:  # broker not up yet: retry until the deadline
            if time.monotonic() > deadline:
                raise
            print(f"topic-init: {error!r}; retrying", file=sys.stderr)
            await asyncio.sleep(RETRY_S)


def main() -> None:
    kafka = KafkaSettings.from_env()
    asyncio.run(create_topics(kafka, float(os.environ.get("FINLLM_TOPIC_INIT_TIMEOUT_S", 120))))
    for name, partitions in sorted(kafka.topics.all().items()):
        print(f"topic {name}: {partitions} partitions")


if __name__ == "__main__":
    main()
