"""The inference worker's HTTP API (FINLLM_HTTP_PORT): served over the worker's engine, which the worker's
forecasts then reach through the same engine loop."""
from __future__ import annotations

import asyncio
import socket

import httpx
import pytest

from inference.api.loop import LoopScorer
from inference.api.protocol import ApiSettings
from inference.metrics import InferenceMetrics
from inference.scorers.base import ScoreItem
from inference.scorers.engine import EngineScorer
from inference.worker import HTTP_PORT_ENV, WorkerConfig, serve_http


def test_settings_come_from_the_environment():
    settings = ApiSettings.from_env({HTTP_PORT_ENV: "9001", "FINLLM_API_KEYS": "a, b,", "FINLLM_HTTP_MAX_TOKENS": "7"})
    assert (settings.port, settings.api_keys, settings.max_tokens) == (9001, frozenset({"a", "b"}), 7)
    assert ApiSettings.from_env({}).api_keys == frozenset()


def test_worker_serves_http_and_scores_forecasts_through_the_same_engine(tiny_model_dir, monkeypatch):
    port = _free_port()
    monkeypatch.setenv(HTTP_PORT_ENV, str(port))
    scorer = EngineScorer(str(tiny_model_dir))
    metrics = InferenceMetrics()

    async def run():
        async with serve_http(scorer, WorkerConfig(engine="paged"), metrics.registry) as shared:
            assert isinstance(shared, LoopScorer)
            url = f"http://127.0.0.1:{port}"
            async with httpx.AsyncClient(base_url=url, timeout=60) as client:
                chat = client.post("/v1/completions", json={"model": "tiny-qwen2", "prompt": "oil", "max_tokens": 30})
                forecast = asyncio.to_thread(shared.score, [ScoreItem("f", "stock shares rose")])
                response, (result,) = await asyncio.gather(chat, forecast)
                assert response.status_code == 200 and result.probs is not None
                assert b"finllm_http_requests_total" in (await client.get("/metrics")).content

    asyncio.run(run())


def test_http_needs_the_paged_engine(tiny_model_dir):
    async def run():
        async with serve_http(object(), WorkerConfig(engine="hf"), None):
            pass

    with pytest.raises(SystemExit, match="FINLLM_ENGINE=paged"):
        asyncio.run(run())


def test_serve_command_is_listed_and_refuses_a_malformed_adapter():
    from click.testing import CliRunner

    from agents.cli import cli

    runner = CliRunner()
    assert "serve" in runner.invoke(cli, ["--help"]).output
    result = runner.invoke(cli, ["serve", "--adapter", "no-equals-sign"])
    assert result.exit_code == 2 and "NAME=PATH" in result.output


@pytest.mark.integration
def test_the_worker_process_answers_http_and_kafka_together(kafka_bootstrap, topic_prefix, tmp_workdir,
                                                            tiny_model_dir, lora_dirs):
    """`python -m inference.worker` with FINLLM_HTTP_PORT: a forecast from Kafka and a completion over HTTP
    (with an API key and an adapter) from one process and one engine."""
    import os

    from streams.admin import ensure_topics
    from streams.processes import WorkerProcess
    from streams.producer import make_producer
    from streams.settings import KafkaSettings
    from streams.topics import Topics
    from schemas import encode
    from tests.inference.test_worker_scaleout import make_request, read_forecasts

    port = _free_port()
    kafka = KafkaSettings(kafka_bootstrap, Topics(topic_prefix, 1))
    env = {k: v for k, v in os.environ.items() if k not in ("FINLLM_REDIS_URL", "FINLLM_ROUTING_FILE")}
    env.update(kafka.env(), FINLLM_ENGINE="paged", FINLLM_MODEL=str(tiny_model_dir), FINLLM_METRICS_PORT="0",
               FINLLM_INFERENCE_GROUP=f"{topic_prefix}inference", FINLLM_ADAPTER_PATHS=f"alpha={lora_dirs['alpha']}",
               FINLLM_API_KEYS="secret", **{HTTP_PORT_ENV: str(port)})
    asyncio.run(ensure_topics(kafka.bootstrap, kafka.topics.all()))
    worker = WorkerProcess("inference", "inference.worker", env, tmp_workdir)
    try:
        worker.wait_ready(180)
        url = f"http://127.0.0.1:{port}"
        assert httpx.get(url + "/health", timeout=30).status_code == 200
        assert httpx.get(url + "/v1/models", timeout=30).status_code == 401
        answer = httpx.post(url + "/v1/completions", headers={"Authorization": "Bearer secret"}, timeout=60,
                            json={"model": "alpha", "prompt": "stock shares rose", "max_tokens": 5})
        assert answer.status_code == 200 and answer.json()["usage"]["completion_tokens"] >= 1

        async def forecast() -> list:
            producer = make_producer(kafka)
            await producer.start()
            request = make_request(0, "alpha")
            await producer.send_and_wait(kafka.topics.requests, encode(request), key=b"alpha")
            await producer.stop()
            return await read_forecasts(kafka, 1)

        (published,) = asyncio.run(forecast())
        assert published.status == "ok" and published.llm is not None
    finally:
        worker.stop()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
