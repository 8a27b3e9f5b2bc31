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
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
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
