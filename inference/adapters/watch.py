"""Hot-load adapters into a running inference worker from the Redis registry.

`RegistryWatch.run` polls the registry (`inference.adapters.registry`) every `poll_s`; a new name
or a new version is loaded into the scorer, a removed name is unloaded. An adapter whose
base model hash differs from the served model's `model_fingerprint` is refused: nothing is
loaded, an error is logged, and the refusal is written to the registry's status hash (shown by
`finllm adapters list`). Loads and scoring never overlap: the worker's scorer is wrapped in
`SerializedScorer`, whose lock the watch also takes.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from pathlib import Path
from typing import Callable, Sequence

from inference.adapters.registry import AdapterRecord, AdapterRegistry, AdapterStatus
from inference.adapters.shipped import SHIPPED_DIR
from inference.scorers.base import ScoreItem, ScoreResult, Scorer
from streams.settings import cache_dir

log = logging.getLogger("finllm.inference.registry")
POLL_S = 1.0


class SerializedScorer:
    """A Scorer whose `score` and adapter changes take one lock, so they never interleave."""

    def __init__(self, scorer: Scorer) -> None:
        self.inner = scorer
        self.model_name = scorer.model_name
        self.lock = threading.Lock()

    def score(self, items: Sequence[ScoreItem]) -> list[ScoreResult]:
        with self.lock:
            return self.inner.score(items)

    def register_adapter(self, name: str, path: str) -> None:
        with self.lock:
            self.inner.register_adapter(name, path)

    def remove_adapter(self, name: str) -> None:
        with self.lock:
            self.inner.remove_adapter(name)

    @property
    def adapter_names(self) -> frozenset[str]:
        return self.inner.adapter_names

    @property
    def resident_adapters(self) -> frozenset[str]:
        return self.inner.resident_adapters

    @property
    def prefix_caching(self) -> bool:
        return self.inner.prefix_caching

    def metrics(self) -> dict:
        return self.inner.metrics()

    def close(self) -> None:
        self.inner.close()


def allowed_adapter_dirs(env: dict[str, str] | None = None) -> tuple[Path, ...]:
    """Where adapters may be loaded from: FINLLM_ADAPTER_DIRS (comma-separated folders), by default the
    shipped adapters and `$FINLLM_CACHE_DIR/adapters`. A registered path elsewhere is refused."""
    env = os.environ if env is None else env
    if env.get("FINLLM_ADAPTER_DIRS"):
        return tuple(Path(p).resolve() for p in env["FINLLM_ADAPTER_DIRS"].split(",") if p)
    return (SHIPPED_DIR, (cache_dir(env) / "adapters").resolve())


def inside(path: str | Path, roots: tuple[Path, ...]) -> bool:
    """Whether `path`, with links and `..` resolved, lies in one of `roots`."""
    real = Path(path).resolve()
    return any(real == root or real.is_relative_to(root) for root in roots)


class RegistryWatch:
    def __init__(self, registry: AdapterRegistry, scorer: SerializedScorer, model_hash: Callable[[], str],
                 poll_s: float = POLL_S, allowed_dirs: tuple[Path, ...] | None = None) -> None:
        self.registry, self.scorer, self.poll_s = registry, scorer, poll_s
        self.allowed_dirs = allowed_adapter_dirs() if allowed_dirs is None else allowed_dirs
        self._model_hash_fn = model_hash
        self.model_hash: str | None = None
        self.loaded: dict[str, int] = {}     # name -> version this watch loaded
        self.settled: dict[str, int] = {}    # name -> version already acted on (loaded, refused or failed)

    async def run(self) -> None:
        self.model_hash = await asyncio.to_thread(self._model_hash_fn)
        log.info("adapter registry watch up: served model hash %s", self.model_hash)
        while True:
            try:
                await self.sync()
            except Exception as error:  # Redis away: keep serving what is loaded, try again later
                log.warning("adapter registry poll failed: %s", error)
            await asyncio.sleep(self.poll_s)

    async def sync(self) -> None:
        """Apply one poll: load new names and versions, unload removed names."""
        records = await self.registry.records()
        for record in records.values():
            if self.settled.get(record.name) != record.version:
                await self._load(record)
        for name in [n for n in self.loaded if n not in records]:
            await self._unload(name)

    async def _load(self, record: AdapterRecord) -> None:
        self.settled[record.name] = record.version
        if not inside(record.path, self.allowed_dirs):
            detail = (f"adapter {record.name!r} v{record.version} is at {record.path}, outside the adapter "
                      f"folders this worker may load from ({', '.join(map(str, self.allowed_dirs))}); not loaded")
            log.error("%s", detail)
            await self._status(record, "refused", detail)
            return
        if record.base_model_hash != self.model_hash:
            detail = (f"adapter {record.name!r} v{record.version} was trained on base model "
                      f"{record.base_model_hash}, but this worker serves {self.model_hash}; not loaded")
            log.error("%s", detail)
            await self._status(record, "refused", detail)
            return
        try:
            await asyncio.to_thread(self._replace, record)
        except Exception as error:
            log.error("adapter %r v%d from %s failed to load: %s", record.name, record.version, record.path, error)
            await self._status(record, "error", str(error))
            return
        self.loaded[record.name] = record.version
        log.info("adapter %r v%d loaded from %s", record.name, record.version, record.path)
        await self._status(record, "loaded")

    def _replace(self, record: AdapterRecord) -> None:
        self.scorer.register_adapter(record.name, record.path)   # replaces a loaded version

    async def _unload(self, name: str) -> None:
        version = self.loaded.pop(name)
        self.settled.pop(name, None)
        try:
            await asyncio.to_thread(self.scorer.remove_adapter, name)
        except Exception as error:
            log.error("adapter %r could not be unloaded: %s", name, error)
            return
        log.info("adapter %r v%d unloaded", name, version)
        await self.registry.set_status(AdapterStatus(name, version, "removed", "", self.model_hash or "",
                                                     time.time_ns()))

    async def _status(self, record: AdapterRecord, state: str, detail: str = "") -> None:
        await self.registry.set_status(AdapterStatus(record.name, record.version, state, detail,
                                                     self.model_hash or "", time.time_ns()))


def start_registry_watch(scorer: Scorer, latest, prefix: str, model_dir: str | None
                         ) -> tuple[Scorer, Callable[[], None]]:
    """For `InferenceWorker.run`: (the scorer to use, a stop function). Without Redis, nothing starts.

    `latest` is the worker's LatestStore (its Redis client is reused) or None.
    """
    if latest is None:
        return scorer, lambda: None
    serialized = SerializedScorer(scorer)
    watch = RegistryWatch(AdapterRegistry(latest.client, prefix), serialized, lambda: served_model_hash(model_dir))
    task = asyncio.get_running_loop().create_task(watch.run(), name="adapter-registry-watch")
    return serialized, lambda: _cancel(task)


def served_model_hash(model_dir: str | None) -> str:
    from inference.checkpoints import model_fingerprint, resolve_model_dir

    return model_fingerprint(resolve_model_dir(model_dir))


def _cancel(task: asyncio.Task) -> None:
    with contextlib.suppress(Exception):
        task.cancel()
