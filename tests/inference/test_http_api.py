"""The HTTP API against a live server on the tiny model: routes, sampling, errors, limits, keys, disconnects,
and forecasts sharing the engine with HTTP requests."""
from __future__ import annotations

import json
import socket
import time

import httpx
import pytest

from inference.engine.sequence import Priority, RequestKind, RequestStatus
from inference.scorers.base import ScoreItem

from tests.inference.http_server import API_KEY, NUM_BLOCKS, LiveServer

AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def server(tiny_model_dir, lora_dirs):
    with LiveServer(tiny_model_dir, lora_dirs, max_prompt_tokens=64, max_tokens=1024, max_body_bytes=8192) as live:
        yield live


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as http:
        yield http


def complete(client, **body):
    response = client.post("/v1/completions", json={"model": "tiny-qwen2", "prompt": "stock shares rose"} | body)
    assert response.status_code == 200, response.text
    return response.json()


def assert_error(response, status: int, code: str | None = None, words: str = ""):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and words in error["message"]
    if code is not None:
        assert error["code"] == code


def sse_events(text: str) -> list:
    lines = [line[len("data: "):] for line in text.splitlines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


def test_health_and_models_name_the_base_and_every_adapter(server, client):
    assert httpx.get(server.url + "/health").json()["status"] == "ok"          # no key needed
    models = client.get("/v1/models").json()
    assert models["object"] == "list"
    assert [m["id"] for m in models["data"]] == ["tiny-qwen2", "alpha", "beta"]
    assert models["data"][1]["parent"] == "tiny-qwen2"


def test_greedy_and_seeded_completions_repeat_and_carry_a_timing_breakdown(client):
    greedy = complete(client, temperature=0, max_tokens=8, ignore_eos=True)
    assert complete(client, temperature=0, max_tokens=8, ignore_eos=True)["choices"][0]["text"] == \
        greedy["choices"][0]["text"]
    usage = greedy["usage"]
    assert usage["completion_tokens"] == 8 and greedy["choices"][0]["finish_reason"] == "length"
    assert set(usage["timing"]) == {"tokenize_ms", "queue_ms", "prefill_ms", "decode_ms"}
    assert usage["timing"]["prefill_ms"] > 0 and usage["timing"]["decode_ms"] > 0
    seeded = [complete(client, temperature=1.5, top_p=0.95, seed=s, max_tokens=12, ignore_eos=True)
              ["choices"][0]["text"] for s in (1, 1, 2, 3)]
    assert seeded[0] == seeded[1] and len(set(seeded)) > 1


def test_adapter_changes_the_answer(client):
    texts = {m: complete(client, model=m, temperature=0, max_tokens=10, ignore_eos=True)["choices"][0]["text"]
             for m in ("tiny-qwen2", "alpha", "beta")}
    assert len(set(texts.values())) == 3


def test_stop_string_cuts_the_text_and_ends_the_request(server, client):
    full = complete(client, temperature=0, max_tokens=20, ignore_eos=True)["choices"][0]["text"]
    stop = full[5:7]
    cut = complete(client, temperature=0, max_tokens=20, ignore_eos=True, stop=[stop])
    assert cut["choices"][0]["text"] == full[:full.index(stop)]
    assert cut["choices"][0]["finish_reason"] == "stop"
    assert cut["usage"]["timing"]["prefill_ms"] > 0 and cut["usage"]["timing"]["decode_ms"] > 0
    assert server.call(lambda: not server.engine.has_unfinished())


def test_logprobs_in_completions_and_chat(client):
    body = complete(client, temperature=0, max_tokens=4, logprobs=2, ignore_eos=True)
    logprobs = body["choices"][0]["logprobs"]
    assert len(logprobs["tokens"]) == len(logprobs["token_logprobs"]) == 4
    assert all(len(top) <= 2 and max(top.values()) >= lp - 1e-9 for top, lp in
               zip(logprobs["top_logprobs"], logprobs["token_logprobs"]))
    assert "".join(logprobs["tokens"]) == body["choices"][0]["text"]
    chat = client.post("/v1/chat/completions", json={"model": "alpha", "max_tokens": 3, "logprobs": True,
                                                      "top_logprobs": 3, "temperature": 0, "ignore_eos": True,
                                                      "messages": [{"role": "user", "content": "hi"}]}).json()
    content = chat["choices"][0]["logprobs"]["content"]
    assert len(content) == 3 and all(len(c["top_logprobs"]) == 3 and c["logprob"] <= 0 for c in content)


def test_streamed_chat_equals_the_unstreamed_one(client):
    body = {"model": "beta", "messages": [{"role": "system", "content": "be brief"},
                                          {"role": "user", "content": [{"type": "text", "text": "oil price"}]}],
            "max_tokens": 10, "temperature": 0, "ignore_eos": True}
    whole = client.post("/v1/chat/completions", json=body).json()
    streamed = client.post("/v1/chat/completions", json=body | {"stream": True,
                                                                "stream_options": {"include_usage": True}})
    assert streamed.headers["content-type"].startswith("text/event-stream")
    events = sse_events(streamed.text)
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"])
    assert text == whole["choices"][0]["message"]["content"]
    assert events[-2]["choices"][0]["finish_reason"] == "length"
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] == 10


@pytest.mark.parametrize("method, path, body, status, code, words", [
    ("get", "/v1/nothing", None, 404, "not_found", ""),
    ("get", "/v1/completions", None, 405, None, ""),
    ("post", "/v1/completions", b"{not json", 400, None, "not valid JSON"),
    ("post", "/v1/completions", {"model": "nope", "prompt": "a"}, 404, "model_not_found", "nope"),
    ("post", "/v1/completions", {"prompt": "a"}, 400, None, "'model' is required"),
    ("post", "/v1/completions", {"model": "alpha", "prompt": "a", "temperature": 3}, 400, None, "temperature"),
    ("post", "/v1/completions", {"model": "alpha", "prompt": "a", "n": 2}, 400, None, "n = 1"),
    ("post", "/v1/completions", {"model": "alpha", "prompt": "a", "top_p": 0}, 400, None, "top_p"),
    ("post", "/v1/completions", {"model": "alpha", "prompt": "a", "stop": ["", "x"]}, 400, None, "stop"),
    ("post", "/v1/completions", {"model": "alpha", "prompt": "a", "logprobs": 9}, 400, None, "logprobs"),
    ("post", "/v1/completions", {"model": "alpha", "prompt": "a", "seed": "x"}, 400, None, "seed"),
    ("post", "/v1/completions", [1, 2], 400, None, "JSON object"),
    ("post", "/v1/completions", {"model": "alpha", "prompt": ["a", "b"]}, 400, None, "one non-empty string"),
    ("post", "/v1/completions", {"model": "alpha", "prompt": [99999]}, 400, None, "token ids"),
    ("post", "/v1/completions", {"model": "alpha", "prompt": "a", "max_tokens": 0}, 400, None, "at least 1"),
    ("post", "/v1/chat/completions", {"model": "alpha", "messages": []}, 400, None, "messages"),
    ("post", "/v1/chat/completions", {"model": "alpha", "messages": [{"role": "robot", "content": "x"}]},
     400, None, "role"),
])
def test_every_error_has_the_openai_shape(client, method, path, body, status, code, words):
    kwargs = {"content": body} if isinstance(body, bytes) else {"json": body} if body is not None else {}
    assert_error(client.request(method.upper(), path, **kwargs), status, code, words)


def test_limits_on_prompt_length_max_tokens_and_body_size(client):
    assert_error(client.post("/v1/completions", json={"model": "alpha", "prompt": "stock " * 200}),
                 400, "prompt_too_long", "at most 64")
    assert_error(client.post("/v1/completions", json={"model": "alpha", "prompt": "a", "max_tokens": 5000}),
                 400, "max_tokens_too_large", "at most 1024")
    assert_error(client.post("/v1/completions", json={"model": "alpha", "prompt": "a" * 10_000}),
                 400, "body_too_large", "8192 bytes")


def test_api_keys_are_required_when_set(server):
    body = {"model": "alpha", "prompt": "a", "max_tokens": 1}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY}):
        assert_error(httpx.post(server.url + "/v1/completions", json=body, headers=headers), 401, "invalid_api_key")
    assert_error(httpx.get(server.url + "/v1/models"), 401)
    ok = httpx.post(server.url + "/v1/completions", json=body, headers={"Authorization": "Bearer test-key-2"})
    assert ok.status_code == 200


def test_a_client_that_disconnects_mid_stream_aborts_its_request_and_frees_its_blocks(server):
    assert server.call(lambda: server.engine.scheduler.block_manager.pool.num_free) == NUM_BLOCKS
    body = json.dumps({"model": "alpha", "prompt": "stock shares rose", "max_tokens": 1000, "ignore_eos": True,
                       "stream": True}).encode()
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     + f"Authorization: Bearer {API_KEY}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        received = b""
        while b"data: " not in received:
            received += sock.recv(4096)
        (request,) = server.call(lambda: list(server.engine.scheduler.running))
        assert server.call(lambda: server.engine.scheduler.block_manager.pool.num_free) < NUM_BLOCKS
    deadline = time.monotonic() + 20
    while server.call(server.engine.has_unfinished) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert request.status is RequestStatus.ABORTED and len(request.output_token_ids) < 1000
    assert server.call(lambda: server.engine.scheduler.block_manager.pool.num_free) == NUM_BLOCKS


def test_forecasts_share_the_engine_with_http_requests(server, client):
    import concurrent.futures

    body = {"model": "alpha", "prompt": "market rally", "max_tokens": 60, "ignore_eos": True, "temperature": 0}
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        chats = [pool.submit(client.post, "/v1/completions", json=body) for _ in range(3)]
        results = server.shared.score([ScoreItem(f"f{i}", "stock shares rose", "beta") for i in range(3)])
        assert all(r.probs is not None and abs(sum(r.probs) - 1) < 1e-9 for r in results)
        assert all(c.result().status_code == 200 for c in chats)


def test_too_many_generations_in_flight_are_refused_not_queued(server, client):
    import dataclasses

    settings = server.api.settings
    server.api.settings = dataclasses.replace(settings, max_active=0)
    try:
        assert_error(client.post("/v1/completions", json={"model": "alpha", "prompt": "a"}), 429, "server_busy")
    finally:
        server.api.settings = settings
    assert complete(client, max_tokens=1)["usage"]["completion_tokens"] == 1


def test_warm_ups_through_the_shared_engine_are_queued_not_awaited(server):
    """A warm-up behind interactive requests would hold the worker's Kafka loop: it is queued and answered
    at once; the engine prefills it later (its prompt is then in the prefix cache)."""
    busy = server.call(lambda: server.api.loop.engine.add_request(
        "busy", [5, 9, 13], RequestKind.GENERATE, max_new_tokens=400, priority=Priority.INTERACTIVE))
    started = time.monotonic()
    (result,) = server.shared.score([ScoreItem("w", "stock shares rose sharply " * 10, background=True)])
    assert result.probs is None and time.monotonic() - started < 1.0
    assert busy.status is RequestStatus.RUNNING
    deadline = time.monotonic() + 30
    while server.call(server.engine.has_unfinished) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert busy.status is RequestStatus.FINISHED
    hits = lambda: server.call(lambda: server.engine.scheduler.block_manager.prefix_hit_tokens)   # noqa: E731
    before = hits()
    (forecast,) = server.shared.score([ScoreItem("f", "stock shares rose sharply " * 10)])
    assert forecast.probs is not None and hits() > before        # the warm-up's blocks were there
