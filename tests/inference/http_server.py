"""A live HTTP API server for tests: the tiny model and two adapters, in a thread with its own event loop."""
from __future__ import annotations

import asyncio
import threading

from inference.api.protocol import ApiSettings
from inference.api.server import serving
from inference.engine.config import EngineConfig
from inference.scorers.engine import EngineScorer
from streams.latest import LatestStore

API_KEY = "test-key-1"
NUM_BLOCKS = 128


class LiveServer:
    """`with LiveServer(model_dir, adapters) as server:` server.url, server.api (ApiServer), server.scorer
    (its EngineScorer), server.shared (the LoopScorer sharing its engine), server.call(fn) runs fn on the engine thread."""

    def __init__(self, model_dir, adapters: dict, redis: tuple[str, str] | None = None, **settings) -> None:
        self.redis = redis                # (URL, key prefix): the latest forecasts /v1/explain reads
        self.scorer = EngineScorer(str(model_dir), adapters={k: str(v) for k, v in adapters.items()},
                                   config=EngineConfig(dtype="float32", num_blocks=NUM_BLOCKS, block_size=16))
        self.settings = ApiSettings(port=0, **({"api_keys": frozenset({API_KEY, "test-key-2"})} | settings))
        self.ready = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _main(self) -> None:
        self.stopping = asyncio.Event()
        self.aloop = asyncio.get_running_loop()
        latest = LatestStore.from_url(*self.redis) if self.redis else None
        try:
            async with serving(self.scorer, self.settings, latest=latest) as (self.api, url, self.shared):
                self.url = url
                self.ready.set()
                await self.stopping.wait()
        finally:
            if latest is not None:
                await latest.close()

    def __enter__(self) -> "LiveServer":
        self.thread.start()
        if not self.ready.wait(60):
            raise RuntimeError("the test server did not start")
        return self

    def __exit__(self, *exc) -> None:
        self.aloop.call_soon_threadsafe(self.stopping.set)
        self.thread.join(30)

    def call(self, fn):
        return self.api.loop.call(fn).result(30)

    @property
    def engine(self):
        return self.api.loop.engine
