"""`python -m agents.worker` started by hand (no supervisor, no FINLLM_WORK_DIR): it starts, keeps Faust's
folder in the cache, and writes nothing in the folder it was started from."""
import asyncio
import os
import subprocess
import sys
import time

import pytest

from streams.admin import ensure_topics
from streams.settings import KafkaSettings
from streams.topics import Topics

pytestmark = pytest.mark.integration


def test_a_hand_started_agents_worker_keeps_its_files_in_the_cache(tmp_path, kafka_bootstrap, topic_prefix):
    here, cache, ready = tmp_path / "here", tmp_path / "cache", tmp_path / "agents.ready"
    here.mkdir()
    kafka = KafkaSettings(kafka_bootstrap, Topics(topic_prefix))
    asyncio.run(ensure_topics(kafka_bootstrap, kafka.topics.all()))
    env = {k: v for k, v in os.environ.items() if k not in ("FINLLM_WORK_DIR", "FINLLM_REDIS_URL")}
    env |= kafka.env() | {"FINLLM_CACHE_DIR": str(cache), "FINLLM_READY_FILE": str(ready),
                          "FINLLM_AGENTS_APP_ID": f"{topic_prefix}agents"}
    worker = subprocess.Popen([sys.executable, "-m", "agents.worker"], cwd=here, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert worker.poll() is None, worker.stdout.read()[-3000:]
            assert time.monotonic() < deadline, "the worker did not become ready"
            time.sleep(0.1)
    finally:
        worker.terminate()
        worker.wait(30)
    assert (cache / "work" / "agents" / f"{topic_prefix}agents-data").is_dir()
    assert list(here.iterdir()) == []
