"""bench/replay_http_load.py end to end on the tiny model: the same replay through the real stack (embedded
broker and Redis, the demo's worker processes) alone and under an HTTP flood on the inference worker's API."""
import json
import os

import pytest

from bench.replay_http_load import environment, main

pytestmark = pytest.mark.integration


def test_the_replay_runs_alone_and_under_an_http_flood(capsys):
    result = main(["--quick", "--speed", "60", "--symbols", "2", "--minutes", "3", "--clients", "3",
                   "--max-tokens", "4"])
    assert json.loads(capsys.readouterr().out.splitlines()[-1]) == result
    assert result["model"].startswith("tiny") and result["missing"] == 0
    assert result["forecasts_alone"] == result["forecasts_http_load"] == result["triggers"] > 0
    assert result["http_requests_served"] > 0 and result["http_tokens"] == 4 * result["http_requests_served"]
    assert 0 <= result["expired_only_under_http_load"] <= result["expired_http_load"]
    assert result["forecast_p50_ms_alone"] <= result["forecast_p99_ms_alone"]
    assert "processor" in result and result["speed"] == 60


def test_environment_is_restored(monkeypatch):
    monkeypatch.setenv("FINLLM_BENCH_A", "kept")
    monkeypatch.delenv("FINLLM_BENCH_B", raising=False)
    with environment(FINLLM_BENCH_A="changed", FINLLM_BENCH_B="new"):
        assert (os.environ["FINLLM_BENCH_A"], os.environ["FINLLM_BENCH_B"]) == ("changed", "new")
    assert os.environ["FINLLM_BENCH_A"] == "kept" and "FINLLM_BENCH_B" not in os.environ
