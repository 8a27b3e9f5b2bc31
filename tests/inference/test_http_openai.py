"""The official `openai` client against a live server: list models, complete with an adapter, stream a chat,
and the client's own error classes for our errors."""
from __future__ import annotations

import openai
import pytest

from tests.inference.http_server import API_KEY, LiveServer


@pytest.fixture(scope="module")
def server(tiny_model_dir, lora_dirs):
    with LiveServer(tiny_model_dir, lora_dirs) as live:
        yield live


@pytest.fixture(scope="module")
def client(server):
    with openai.OpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0, timeout=60) as api:
        yield api


def test_lists_the_base_model_and_its_adapters(client):
    assert [m.id for m in client.models.list()] == ["tiny-qwen2", "alpha", "beta"]


def test_completes_with_an_adapter(client):
    answer = client.completions.create(model="alpha", prompt="stock shares rose", max_tokens=6, temperature=0,
                                       seed=3, logprobs=1, extra_body={"ignore_eos": True})
    choice = answer.choices[0]
    assert answer.model == "alpha" and choice.finish_reason == "length" and choice.text
    assert answer.usage.completion_tokens == 6 and len(choice.logprobs.tokens) == 6
    base = client.completions.create(model="tiny-qwen2", prompt="stock shares rose", max_tokens=6, temperature=0,
                                     extra_body={"ignore_eos": True})
    assert base.choices[0].text != choice.text


def test_streams_a_chat(client):
    messages = [{"role": "user", "content": "What moved the oil price?"}]
    chunks = list(client.chat.completions.create(model="beta", messages=messages, max_tokens=8, temperature=0.7,
                                                 seed=5, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    whole = client.chat.completions.create(model="beta", messages=messages, max_tokens=8, temperature=0.7, seed=5)
    assert text == whole.choices[0].message.content and text
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason


def test_errors_arrive_as_the_clients_exceptions(server, client):
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.completions.create(model="gamma", prompt="a", max_tokens=1)
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.completions.create(model="alpha", prompt="a", max_tokens=1, temperature=5)
    with openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0) as stranger:
        with pytest.raises(openai.AuthenticationError):
            stranger.models.list()
