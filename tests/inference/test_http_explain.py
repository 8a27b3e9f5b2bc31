"""Explaining a forecast (/v1/explain/{symbol}, `finllm explain`): the inference worker keeps the prompt it
scored beside the latest forecast in a real Redis; the server asks the model, through the forecast's
adapter, about exactly that prompt and answer, and nothing published after it."""
from __future__ import annotations

import asyncio
import json
import time
from types import SimpleNamespace

import httpx
import pytest
from click.testing import CliRunner

from inference.api.explain import Explainable, ungrounded_numbers
from inference.fusion import FusionPolicy
from inference.worker import InferenceWorker, WorkerConfig
from schemas import InferenceRequest, Probs, encode
from schemas.forecast import forecast_id
from streams.latest import LatestStore
from streams.settings import KafkaSettings
from streams.topics import Topics

from tests.inference.http_server import API_KEY, LiveServer

AUTH = {"Authorization": f"Bearer {API_KEY}"}
T0 = 1_790_000_000_000_000_000
MINUTE = 60_000_000_000
BODY = {"max_tokens": 12, "ignore_eos": True}


def prompt(symbol: str, headline: str) -> str:
    return (f"Forecast for {symbol}.\nNews:\n- 2026-09-21 12:00:00 [wire] {headline}\nNow 2026-09-21 12:01:00. "
            "News weights: 0.90.\nMarket: ret1 +2.0bp ret5 +4.5bp vol 3.1bp/min spread 1.2bp trades 14.\n"
            "Direction over the next 60s (up, down or flat):")


def request(symbol: str, ts_ns: int, headline: str, adapter: str | None) -> InferenceRequest:
    now = time.time_ns()
    return InferenceRequest(forecast_id(symbol, ts_ns, "news", headline[:8]), symbol, ts_ns, 60, "news",
                            prompt(symbol, headline), Probs(0.4, 0.3, 0.3), ("n1",), adapter, now, now,
                            now + 60_000_000_000)


class _Producer:
    async def send(self, topic, value, key=None):
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


def through_the_worker(server: LiveServer, redis_url: str, prefix: str, *requests: InferenceRequest) -> None:
    """The worker's own path: decode, score (on the server's engine), publish, store the latest in Redis."""
    worker = InferenceWorker(KafkaSettings("127.0.0.1:9", Topics(prefix=prefix)), redis_url, server.shared,
                             WorkerConfig(), FusionPolicy())
    records = [SimpleNamespace(value=encode(r), topic="requests", key=None, partition=0, offset=i)
               for i, r in enumerate(requests)]

    async def run():
        try:
            await worker._handle(records, _Producer())
        finally:
            await worker.latest.close()

    asyncio.run(run())
    assert worker.forecasts_published == len(requests)


def stored(redis_url: str, prefix: str, symbol: str):
    async def read():
        store = LatestStore.from_url(redis_url, prefix)
        try:
            return await store.read_with_prompt(symbol)
        finally:
            await store.close()
    return asyncio.run(read())


def sse(text: str) -> list[dict]:
    lines = [line[len("data: "):] for line in text.splitlines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


@pytest.fixture(scope="module")
def prefix() -> str:
    return f"explain{time.time_ns() % 10**9}."


@pytest.fixture(scope="module")
def server(tiny_model_dir, lora_dirs, redis_url, prefix):
    with LiveServer(tiny_model_dir, lora_dirs, redis=(redis_url, prefix)) as live:
        yield live


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=120) as http:
        yield http


def test_explains_the_latest_forecast_from_what_it_saw_through_its_adapter(server, client, redis_url, prefix):
    through_the_worker(server, redis_url, prefix, request("ACME", T0, "Acme wins a record contract", "alpha"))
    # published after the forecast: another symbol's news, and a replayed older ACME request (kept out)
    through_the_worker(server, redis_url, prefix, request("BOLT", T0 + MINUTE, "Acme recalls every product", "beta"),
                       request("ACME", T0 - MINUTE, "Acme stale rumour", "beta"))
    forecast, kept = stored(redis_url, prefix, "ACME")
    assert kept == prompt("ACME", "Acme wins a record contract") and forecast["adapter"] == "alpha"
    expected = Explainable("ACME", forecast, kept).prompt_text(server.scorer.prompt_format)
    assert expected.startswith(kept) and "recalls" not in expected and "stale" not in expected
    assert f"Your forecast for ACME is {forecast['direction']}" in expected

    response = client.post("/v1/explain/ACME", json=BODY | {"stream_options": {"include_usage": True}})
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/event-stream")
    events = sse(response.text)
    assert {e["model"] for e in events} == {"alpha"}                      # the forecast's adapter
    streamed = "".join(c["text"] for e in events for c in e["choices"])
    assert streamed                                   # the random tiny model may answer white space
    usage = events[-1]["usage"]
    assert usage["prompt_tokens"] == len(server.scorer.tokenizer.encode(expected, add_special_tokens=False))
    assert usage["completion_tokens"] == 12
    # the same prompt and adapter as a plain greedy completion: nothing else went into it
    same = client.post("/v1/completions", json=BODY | {"model": "alpha", "prompt": expected, "temperature": 0})
    assert same.json()["choices"][0]["text"] == streamed
    assert "grounding" not in same.json()                                 # a plain completion is not checked
    finished = [e for e in events if e["choices"] and e["choices"][0]["finish_reason"]]
    assert finished[0]["grounding"] == {"ungrounded_numbers": ungrounded_numbers(streamed, expected)}
    whole = client.get("/v1/explain/ACME")                                   # GET: the defaults, streamed
    assert whole.status_code == 200 and sse(whole.text)


def test_a_newer_forecast_replaces_the_prompt_explained(server, client, redis_url, prefix):
    through_the_worker(server, redis_url, prefix, request("CORE", T0, "Core opens a plant", None),
                       request("CORE", T0 + MINUTE, "Core cuts its outlook", "beta"))
    forecast, kept = stored(redis_url, prefix, "CORE")
    assert "cuts its outlook" in kept and "opens a plant" not in kept and forecast["adapter"] == "beta"
    answer = client.post("/v1/explain/CORE", json=BODY | {"stream": False}).json()
    assert answer["model"] == "beta" and answer["usage"]["completion_tokens"] == 12


def test_unknown_symbol_and_a_forecast_without_its_prompt_are_404(server, client, redis_url, prefix):
    response = client.post("/v1/explain/NOPE", json={})
    assert response.status_code == 404
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == "forecast_not_found"
    through_the_worker(server, redis_url, prefix, request("DUSK", T0, "Dusk merges", None))
    forecast, _ = stored(redis_url, prefix, "DUSK")

    async def store_without_prompt():
        from schemas import decode_forecast

        store = LatestStore.from_url(redis_url, prefix)
        try:
            newer = decode_forecast(encode(forecast | {"ts_ns": T0 + MINUTE}))
            assert await store.store(newer)
        finally:
            await store.close()

    asyncio.run(store_without_prompt())                   # a newer forecast without a prompt drops the old one
    response = client.post("/v1/explain/DUSK", json={})
    assert response.status_code == 404 and response.json()["error"]["code"] == "prompt_not_found"
    assert client.post("/v1/explain/ACME", json={"temperature": 7}).status_code == 400


def test_explain_command_streams_from_a_server(server, client, redis_url, prefix):
    from agents.cli import cli

    through_the_worker(server, redis_url, prefix, request("EAST", T0, "East raises prices", "alpha"))
    runner = CliRunner()
    args = ["explain", "EAST", "--url", server.url, "--api-key", API_KEY, "--max-tokens", "8"]
    done = runner.invoke(cli, args)
    assert done.exit_code == 0, done.output
    expected = client.post("/v1/explain/EAST", json={"max_tokens": 8, "stream": False}).json()
    assert done.output == expected["choices"][0]["text"] + "\n"
    missing = runner.invoke(cli, ["explain", "NOPE", "--url", server.url, "--api-key", API_KEY])
    assert missing.exit_code != 0 and "no forecast for NOPE yet" in missing.output
    refused = runner.invoke(cli, ["explain", "EAST", "--url", server.url])
    assert refused.exit_code != 0 and "API key" in refused.output


def test_explain_command_loads_the_model_itself_without_url(server, redis_url, prefix):
    from agents.cli import cli

    through_the_worker(server, redis_url, prefix, request("FERN", T0, "Fern wins a tender", None))
    done = CliRunner().invoke(cli, ["explain", "FERN", "--redis", redis_url, "--prefix", prefix, "--model", "tiny",
                                    "--max-tokens", "4"])
    assert done.exit_code == 0, done.output
    missing = CliRunner().invoke(cli, ["explain", "NOPE", "--redis", redis_url, "--prefix", prefix, "--model", "tiny"])
    assert missing.exit_code != 0 and "no forecast for NOPE yet" in missing.output


def test_numbers_an_explanation_states_that_its_inputs_never_held_are_listed():
    source = prompt("ACME", "Acme wins a record contract worth 1,200 million") + " up 40%, down 35%, flat 25%"
    explanation = ("ACME rose 4.5bp on 14 trades after a 1200 million contract; expect up (40%). It fell 41% in "
                   "the past 24 hours, and 41% is not in the data; 2026 results -3.0 and 12:00 are.")
    assert ungrounded_numbers(explanation, source) == ["41", "24", "-3.0"]
    assert ungrounded_numbers("Up 40% on the contract news.", source) == []
