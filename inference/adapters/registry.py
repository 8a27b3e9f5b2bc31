"""Adapter metadata in Redis: what inference workers should serve, and what each did with it.

Keys (under the deployment's prefix, the same one the topics and the latest store use):
- `{prefix}finllm:adapters`          hash name -> AdapterRecord as JSON (the wanted set);
- `{prefix}finllm:adapters:version`  hash name -> last version handed out (never reused);
- `{prefix}finllm:adapters:status`   hash name -> AdapterStatus as JSON (last writer wins).
The path is a folder every worker can read (a shared volume); workers compare the record's
base model hash with the model they serve before loading it.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import orjson
import redis.asyncio as aioredis

from inference.adapters.cards import read_card


def registry_key(prefix: str = "") -> str:
    return f"{prefix}finllm:adapters"


@dataclass(frozen=True, slots=True)
class AdapterRecord:
    name: str
    version: int
    base_model_hash: str
    rank: int
    path: str
    task: str | None = None
    registered_ns: int = 0

    def encode(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def decode(cls, raw: bytes | str) -> AdapterRecord:
        return cls(**orjson.loads(raw))


@dataclass(frozen=True, slots=True)
class AdapterStatus:
    name: str
    version: int
    state: str            # "loaded", "refused" (base model mismatch), "error", "removed"
    detail: str = ""
    model_hash: str = ""  # the served model's hash, as the worker saw it
    at_ns: int = 0


class RegistryError(ValueError):
    """An adapter folder cannot be registered (not a PEFT folder, no base model hash)."""


def record_from_folder(name: str, path: str | Path, base_model_hash: str | None = None) -> AdapterRecord:
    """Read rank (adapter_config.json) and base hash (card.json, unless given) of an adapter folder.

    The version is 0 here; `AdapterRegistry.register` assigns the real one.
    """
    folder = Path(path).resolve()
    config_path = folder / "adapter_config.json"
    if not config_path.is_file():
        raise RegistryError(f"{folder} holds no adapter_config.json: not a PEFT adapter folder")
    card = read_card(folder)
    base_hash = base_model_hash or card.get("base_model_hash")
    if not base_hash:
        raise RegistryError(f"{folder} has no card.json with base_model_hash; pass the base model hash")
    rank = int(orjson.loads(config_path.read_bytes())["r"])
    return AdapterRecord(name, 0, base_hash, rank, str(folder), card.get("task"))


class AdapterRegistry:
    def __init__(self, client: aioredis.Redis, prefix: str = "") -> None:
        self.client = client
        self.key = registry_key(prefix)

    @classmethod
    def from_url(cls, url: str, prefix: str = "") -> AdapterRegistry:
        return cls(aioredis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0), prefix)

    async def register(self, record: AdapterRecord) -> AdapterRecord:
        """Store `record` under a new version (one more than any this name ever had)."""
        version = int(await self.client.hincrby(f"{self.key}:version", record.name, 1))
        stored = AdapterRecord(record.name, version, record.base_model_hash, record.rank, record.path,
                               record.task, time.time_ns())
        await self.client.hset(self.key, record.name, stored.encode())
        return stored

    async def remove(self, name: str) -> bool:
        return bool(await self.client.hdel(self.key, name))

    async def records(self) -> dict[str, AdapterRecord]:
        raw = await self.client.hgetall(self.key)
        return {_text(name): AdapterRecord.decode(value) for name, value in raw.items()}

    async def set_status(self, status: AdapterStatus) -> None:
        await self.client.hset(f"{self.key}:status", status.name, orjson.dumps(asdict(status)))

    async def statuses(self) -> dict[str, AdapterStatus]:
        raw = await self.client.hgetall(f"{self.key}:status")
        return {_text(name): AdapterStatus(**orjson.loads(value)) for name, value in raw.items()}

    async def close(self) -> None:
        await self.client.aclose()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
