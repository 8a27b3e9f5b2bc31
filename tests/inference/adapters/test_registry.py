"""The adapter registry in a real Redis, and hot-loading into a running scorer (load, refuse, unload)."""
from __future__ import annotations

import asyncio
import json
import logging
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from agents.cli import cli
from inference.adapters.registry import AdapterRegistry, RegistryError, record_from_folder
from inference.adapters.train import TrainConfig, base_card, train_adapter, write_card
from inference.adapters.watch import RegistryWatch, SerializedScorer, start_registry_watch
from inference.checkpoints import model_fingerprint
from inference.scorers.base import ScoreItem
from inference.scorers.engine import EngineScorer
from streams.latest import LatestStore

PROMPT = "News: shares rally.\nDirection (up, down or flat):"


@pytest.fixture(autouse=True)
def adapters_from_test_folders(monkeypatch, tmp_path_factory):
    """The watch loads only from configured folders: here, pytest's temporary folders."""
    monkeypatch.setenv("FINLLM_ADAPTER_DIRS", str(tmp_path_factory.getbasetemp()))


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir, tmp_path_factory):
    """A trained adapter with a card naming the tiny model's hash."""
    out = tmp_path_factory.mktemp("registry") / "toy"
    _, stats = train_adapter(tiny_model_dir, [PROMPT, PROMPT + " x"], ["up", "down"], out,
                             TrainConfig(rank=4, max_steps=2, learning_rate=1e-2))
    write_card(out, base_card(tiny_model_dir, TrainConfig(rank=4), stats) | {"task": "direction"})
    return out


@pytest.fixture
def foreign_dir(adapter_dir, tmp_path):
    """The same weights, but a card that claims another base model."""
    out = tmp_path / "foreign"
    shutil.copytree(adapter_dir, out)
    card = json.loads((out / "card.json").read_text())
    (out / "card.json").write_text(json.dumps(card | {"base_model_hash": "0000000000000000"}))
    return out


def run(coro):
    return asyncio.run(coro)


def test_register_bumps_versions_list_and_remove(redis_url, topic_prefix, adapter_dir):
    async def scenario():
        registry = AdapterRegistry.from_url(redis_url, topic_prefix)
        try:
            record = record_from_folder("toy", adapter_dir)
            first, second = await registry.register(record), await registry.register(record)
            listed = await registry.records()
            removed, again = await registry.remove("toy"), await registry.remove("toy")
            third = await registry.register(record)
            return first, second, listed, removed, again, third
        finally:
            await registry.close()

    first, second, listed, removed, again, third = run(scenario())
    assert (first.version, second.version, third.version) == (1, 2, 3)   # versions are never reused
    assert listed == {"toy": second} and second.rank == 4 and second.task == "direction"
    assert removed and not again


def test_folders_without_a_card_need_a_base_hash(adapter_dir, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(adapter_dir, bare)
    (bare / "card.json").unlink()
    with pytest.raises(RegistryError, match="base_model_hash"):
        record_from_folder("bare", bare)
    assert record_from_folder("bare", bare, "abc").base_model_hash == "abc"
    with pytest.raises(RegistryError, match="not a PEFT"):
        record_from_folder("none", tmp_path)


def watching(redis_url: str, topic_prefix: str, scorer, model_dir) -> tuple[AdapterRegistry, RegistryWatch]:
    """A registry and a watch over it for `scorer`, serving the model in `model_dir`."""
    registry = AdapterRegistry.from_url(redis_url, topic_prefix)
    watch = RegistryWatch(registry, scorer, lambda: model_fingerprint(model_dir))
    watch.model_hash = model_fingerprint(model_dir)
    return registry, watch


def test_watch_loads_refuses_replaces_and_unloads(redis_url, topic_prefix, tiny_model_dir, adapter_dir,
                                                  foreign_dir, caplog):
    scorer = SerializedScorer(EngineScorer(str(tiny_model_dir)))

    async def scenario():
        registry, watch = watching(redis_url, topic_prefix, scorer, tiny_model_dir)
        try:
            await registry.register(record_from_folder("toy", adapter_dir))
            await registry.register(record_from_folder("alien", foreign_dir))
            await watch.sync()
            loaded = set(scorer.inner.engine.registry.names)
            statuses = await registry.statuses()
            await registry.register(record_from_folder("toy", adapter_dir))
            await watch.sync()
            replaced = scorer.inner.engine.registry.get("toy").version
            await registry.remove("toy")
            await watch.sync()
            return loaded, statuses, replaced, set(scorer.inner.engine.registry.names), await registry.statuses()
        finally:
            await registry.close()

    with caplog.at_level(logging.ERROR, logger="finllm.inference.registry"):
        loaded, statuses, replaced, after, final = run(scenario())
    assert loaded == {"toy"}
    assert statuses["toy"].state == "loaded" and statuses["alien"].state == "refused"
    assert "0000000000000000" in statuses["alien"].detail and "not loaded" in caplog.text
    assert replaced == 2                       # the new version replaced the old one in the engine
    assert after == set() and final["toy"].state == "removed"
    assert scorer.score([ScoreItem("r", PROMPT)])[0].probs is not None


def test_a_running_worker_task_picks_up_a_new_adapter(redis_url, topic_prefix, tiny_model_dir, adapter_dir):
    async def scenario():
        latest = LatestStore.from_url(redis_url, topic_prefix)
        scorer, stop = start_registry_watch(EngineScorer(str(tiny_model_dir)), latest, topic_prefix,
                                            str(tiny_model_dir))
        registry = AdapterRegistry.from_url(redis_url, topic_prefix)
        try:
            await registry.register(record_from_folder("hot", adapter_dir))
            for _ in range(50):
                if "hot" in scorer.inner.engine.registry:
                    break
                await asyncio.sleep(0.1)
            return await asyncio.to_thread(scorer.score, [ScoreItem("r", PROMPT, "hot")])
        finally:
            stop()
            await registry.close()
            await latest.close()

    results = run(scenario())
    assert results[0].probs is not None and not results[0].expired


def test_transformers_scorer_hot_loads_and_unloads(redis_url, topic_prefix, tiny_model_dir, adapter_dir):
    from inference.scorers.hf import HFScorer

    scorer = SerializedScorer(HFScorer(str(tiny_model_dir)))

    async def scenario():
        registry, watch = watching(redis_url, topic_prefix, scorer, tiny_model_dir)
        try:
            await registry.register(record_from_folder("toy", adapter_dir))
            await watch.sync()
            loaded = scorer.adapter_names
            await registry.remove("toy")
            await watch.sync()
            return loaded, scorer.adapter_names
        finally:
            await registry.close()

    loaded, after = run(scenario())
    assert loaded == frozenset({"toy"}) and after == frozenset()


def test_cli_register_list_remove(redis_url, topic_prefix, adapter_dir):
    env = {"FINLLM_REDIS_URL": redis_url, "FINLLM_TOPIC_PREFIX": topic_prefix}
    runner = CliRunner()
    registered = runner.invoke(cli, ["adapters", "register", "toy", str(adapter_dir)], env=env)
    assert registered.exit_code == 0, registered.output
    assert json.loads(registered.output)["version"] == 1
    listed = [json.loads(line) for line in runner.invoke(cli, ["adapters", "list"], env=env).output.splitlines()]
    assert [(e["name"], e["rank"], e["status"]) for e in listed] == [("toy", 4, None)]
    assert runner.invoke(cli, ["adapters", "remove", "toy"], env=env).exit_code == 0
    missing = runner.invoke(cli, ["adapters", "remove", "toy"], env=env)
    assert missing.exit_code != 0 and "no adapter" in missing.output


def test_watch_refuses_adapters_outside_the_configured_folders(redis_url, topic_prefix, tiny_model_dir, adapter_dir,
                                                              tmp_path):
    from inference.adapters.watch import allowed_adapter_dirs, inside

    scorer = SerializedScorer(EngineScorer(str(tiny_model_dir)))
    allowed = (tmp_path / "allowed").resolve()
    allowed.mkdir()
    sneaky = allowed / ".." / adapter_dir.name   # a path that climbs out of the allowed folder

    async def scenario():
        registry = AdapterRegistry.from_url(redis_url, topic_prefix)
        watch = RegistryWatch(registry, scorer, lambda: model_fingerprint(tiny_model_dir), allowed_dirs=(allowed,))
        watch.model_hash = model_fingerprint(tiny_model_dir)
        try:
            await registry.register(record_from_folder("outside", adapter_dir))
            await watch.sync()
            return await registry.statuses()
        finally:
            await registry.close()

    statuses = run(scenario())
    assert statuses["outside"].state == "refused" and "outside the adapter folders" in statuses["outside"].detail
    assert "outside" not in scorer.inner.engine.registry
    assert not inside(sneaky, (allowed,)) and inside(allowed / "a" / "b", (allowed,))
    assert allowed_adapter_dirs({"FINLLM_ADAPTER_DIRS": f"{allowed},/x"}) == (allowed, Path("/x"))
