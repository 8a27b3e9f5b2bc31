"""One routing file sets up both workers: the agents route symbols by it, the inference worker loads its
adapters; explicit settings win over it, and a broken file is a clear error at start-up."""
import json

import pytest

from agents.config import AgentsConfig
from inference.adapters.shipped import load_routing, shipped_routing
from inference.worker import WorkerConfig


def test_the_shipped_routing_file_configures_both_workers(monkeypatch):
    routing = shipped_routing("tiny")
    for key, value in routing.env().items():
        monkeypatch.setenv(key, value)
    agents = AgentsConfig.from_env()
    assert agents.adapters == routing.routes and agents.default_adapter == routing.default
    assert dict(WorkerConfig.from_env().adapters) == {n: str(p) for n, p in routing.adapters.items()}
    assert agents.adapter_for("ACME") == routing.routes["ACME"]
    assert agents.adapter_for("NOT-A-SYMBOL") == routing.default


def test_explicit_routes_and_adapters_win_over_the_file(monkeypatch, tmp_path):
    monkeypatch.setenv("FINLLM_ROUTING_FILE", str(shipped_routing("tiny").file))
    monkeypatch.setenv("FINLLM_ADAPTERS", "ACME:mine")
    monkeypatch.setenv("FINLLM_DEFAULT_ADAPTER", "mine")
    monkeypatch.setenv("FINLLM_ADAPTER_PATHS", f"mine={tmp_path}")
    assert AgentsConfig.from_env().adapters == {"ACME": "mine"}
    assert AgentsConfig.from_env().default_adapter == "mine"
    assert dict(WorkerConfig.from_env().adapters)["mine"] == str(tmp_path)


@pytest.mark.parametrize("content, message", [("{", "routing file"), ('{"routes": {}}', "needs the objects"),
                                              ('{"adapters": {}, "routes": {"ACME": "x"}}', "does not list")])
def test_a_broken_routing_file_is_a_clear_error(monkeypatch, tmp_path, content, message):
    path = tmp_path / "routing.json"
    path.write_text(content)
    monkeypatch.setenv("FINLLM_ROUTING_FILE", str(path))
    with pytest.raises(ValueError, match=message):
        AgentsConfig.from_env()
    with pytest.raises(ValueError, match=message):
        load_routing(path)


def test_a_routing_file_resolves_adapters_beside_it(tmp_path):
    (tmp_path / "routing.json").write_text(json.dumps({"adapters": {"a": "a"}, "routes": {"ACME": "a"}}))
    assert load_routing(tmp_path).adapters == {"a": (tmp_path / "a").resolve()}
    assert load_routing(tmp_path / "routing.json").file == (tmp_path / "routing.json").resolve()
