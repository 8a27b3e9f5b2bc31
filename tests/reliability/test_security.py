"""Security: a request cannot make the inference worker load files; connection settings take TLS and
SASL; no secret is printed.

Adapters are loaded only from the worker's configuration (FINLLM_ADAPTER_PATHS, or the registry an
operator writes); a request only names one. The schema refuses names that look like paths, and the
scorer answers an unregistered name with no LLM score instead of loading anything.
"""
from __future__ import annotations

import asyncio
import logging
import ssl

import orjson
import pytest

from schemas import SchemaError, decode_request
from streams.latest import LatestStore
from streams.producer import make_producer
from streams.settings import KafkaSettings

pytestmark = pytest.mark.reliability
SECRET = "s3cr3t-Pa55"
REQUEST = {"id": "r1", "symbol": "ACME", "ts_ns": 1_767_623_400 * 10**9, "horizon_s": 60, "trigger": "cadence",
           "prompt": "p", "numeric": {"p_up": 0.3, "p_down": 0.3, "p_flat": 0.4}, "news_ids": [],
           "ingest_wall_ns": 1, "created_wall_ns": 1, "deadline_wall_ns": 1}


@pytest.mark.parametrize("name", ["../../etc/passwd", "/etc/passwd", "adapters/../x", "..", "a/b", "a\\b",
                                  "~root", ".hidden", "C:\\x", "a" * 65, "lora\n", "lora a"])
def test_requests_cannot_name_a_path_as_adapter(name):
    with pytest.raises(SchemaError) as caught:
        decode_request(orjson.dumps(REQUEST | {"adapter": name}))
    assert caught.value.reason in {"bad_adapter", "bad_identifier"}


@pytest.mark.parametrize("name", ["lora-0", "deep", "acme_v2.1", "A1"])
def test_adapter_names_still_pass(name):
    assert decode_request(orjson.dumps(REQUEST | {"adapter": name})).adapter == name


def test_the_scorer_loads_nothing_a_request_names(tmp_path):
    from inference.scorers.engine import EngineScorer
    from inference.checkpoints import resolve_model_dir
    from inference.scorers.base import ScoreItem

    scorer = EngineScorer(str(resolve_model_dir("tiny")))
    try:
        before = list(scorer.engine.registry.names)
        results = scorer.score([ScoreItem("a", "the price rose", adapter=str(tmp_path)),
                                ScoreItem("b", "the price rose", adapter="../../etc/passwd"),
                                ScoreItem("c", "the price rose")])
        assert [r.probs is None for r in results] == [True, True, False]
        assert str(tmp_path) not in scorer.engine.registry and "../../etc/passwd" not in scorer.engine.registry
        assert list(scorer.engine.registry.names) == before
    finally:
        scorer.close()


def test_kafka_takes_tls_and_sasl_and_hides_the_password():
    env = {"FINLLM_KAFKA_BOOTSTRAP": "broker:9093", "FINLLM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
           "FINLLM_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512", "FINLLM_KAFKA_SASL_USERNAME": "finllm",
           "FINLLM_KAFKA_SASL_PASSWORD": SECRET}
    settings = KafkaSettings.from_env(env=env)
    kwargs = settings.client_kwargs()
    assert isinstance(kwargs["ssl_context"], ssl.SSLContext) and kwargs["security_protocol"] == "SASL_SSL"
    assert kwargs["sasl_mechanism"] == "SCRAM-SHA-512" and kwargs["sasl_plain_password"] == SECRET
    assert SECRET not in repr(settings) and SECRET not in str(settings)

    async def build():                       # aiokafka accepts them (no connection is made here)
        return make_producer(settings).client._security_protocol

    assert asyncio.run(build()) == "SASL_SSL"


def test_redis_takes_tls_and_a_password_and_logs_no_url(caplog):
    caplog.set_level(logging.DEBUG)
    store = LatestStore.from_url(f"rediss://finllm:{SECRET}@cache:6380/0")
    kwargs = store.client.connection_pool.connection_kwargs
    assert kwargs["password"] == SECRET and store.client.connection_pool.connection_class.__name__ == "SSLConnection"
    assert SECRET not in caplog.text and SECRET not in repr(store.client)



def test_the_longest_prompt_the_agents_can_build_is_scored_not_refused():
    """Prompts are bounded by construction (max_news_in_prompt headlines of MAX_HEADLINE_CHARS after
    sanitising); the worst case (CJK text, about 3 tokens a character) still fits the model."""
    import random

    from agents.config import AgentsConfig
    from agents.features import Features
    from agents.prompt import build_prompt
    from inference.scorers.engine import EngineScorer
    from inference.checkpoints import resolve_model_dir
    from inference.scorers.base import ScoreItem
    from schemas import NewsItem

    rng = random.Random(1)
    text = "".join(chr(rng.randint(0x4E00, 0x9FFF)) for _ in range(1000))
    news = tuple(NewsItem(f"n{i}", 1_767_623_400 * 10**9 + i, "wire", text, ("ACME",))
                 for i in range(AgentsConfig().max_news_in_prompt))
    prompt = build_prompt("ACME", 1_767_623_400 * 10**9 + 10, Features(100.0, 0.01, 0.02, 1e-3, 1e6, 100, 2.0),
                          news, 600, 60)
    scorer = EngineScorer(str(resolve_model_dir("tiny")))
    try:
        (result,) = scorer.score([ScoreItem("long", prompt)])
        assert result.probs is not None and scorer.num_rejected == 0
    finally:
        scorer.close()
