"""Connection settings, read once at the process edge from flags and environment variables."""
from __future__ import annotations

import os
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streams.topics import DEFAULT_PARTITIONS, Topics

OFF_WORDS = ("0", "false", "no", "off")


def env_flag(env: dict[str, str] | Any, name: str, default: bool) -> bool:
    """A yes/no setting: unset or empty gives `default`; 0/false/no/off (any case) is off, anything else on."""
    value = env.get(name)
    return default if not value else value.lower() not in OFF_WORDS


@dataclass(frozen=True, slots=True)
class KafkaSettings:
    bootstrap: str
    topics: Topics = field(default_factory=Topics)
    security_protocol: str = "PLAINTEXT"   # PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL
    sasl_mechanism: str | None = None      # PLAIN, SCRAM-SHA-256, SCRAM-SHA-512
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_cafile: str | None = None

    @classmethod
    def from_env(cls, bootstrap: str | None = None, env: dict[str, str] | None = None) -> KafkaSettings:
        env = os.environ if env is None else env
        bootstrap = bootstrap or env.get("FINLLM_KAFKA_BOOTSTRAP")
        if not bootstrap:
            raise ValueError("no Kafka bootstrap servers: pass --bootstrap or set FINLLM_KAFKA_BOOTSTRAP")
        topics = Topics(env.get("FINLLM_TOPIC_PREFIX", ""), int(env.get("FINLLM_PARTITIONS", DEFAULT_PARTITIONS)))
        return cls(bootstrap, topics, env.get("FINLLM_KAFKA_SECURITY_PROTOCOL", "PLAINTEXT"),
                   env.get("FINLLM_KAFKA_SASL_MECHANISM"), env.get("FINLLM_KAFKA_SASL_USERNAME"),
                   env.get("FINLLM_KAFKA_SASL_PASSWORD"), env.get("FINLLM_KAFKA_SSL_CAFILE"))

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments shared by aiokafka producers, consumers and admin clients."""
        kw: dict[str, Any] = {"bootstrap_servers": self.bootstrap, "security_protocol": self.security_protocol}
        if "SSL" in self.security_protocol:
            kw["ssl_context"] = ssl.create_default_context(cafile=self.ssl_cafile)
        if self.sasl_mechanism:
            kw |= {"sasl_mechanism": self.sasl_mechanism, "sasl_plain_username": self.sasl_username,
                   "sasl_plain_password": self.sasl_password}
        return kw

    def env(self) -> dict[str, str]:
        """The environment that hands these settings to a child process."""
        out = {"FINLLM_KAFKA_BOOTSTRAP": self.bootstrap, "FINLLM_TOPIC_PREFIX": self.topics.prefix,
               "FINLLM_PARTITIONS": str(self.topics.partitions),
               "FINLLM_KAFKA_SECURITY_PROTOCOL": self.security_protocol}
        for key, value in (("FINLLM_KAFKA_SASL_MECHANISM", self.sasl_mechanism),
                           ("FINLLM_KAFKA_SASL_USERNAME", self.sasl_username),
                           ("FINLLM_KAFKA_SASL_PASSWORD", self.sasl_password),
                           ("FINLLM_KAFKA_SSL_CAFILE", self.ssl_cafile)):
            if value:
                out[key] = value
        return out


def redis_url_from_env(url: str | None = None, env: dict[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    url = url or env.get("FINLLM_REDIS_URL")
    if not url:
        raise ValueError("no Redis: pass --redis or set FINLLM_REDIS_URL")
    return url


def cache_dir(env: dict[str, str] | Any = None) -> Path:
    """Where built models, hot-loaded adapters and worker state live: FINLLM_CACHE_DIR, else ~/.cache/finllm."""
    env = os.environ if env is None else env
    return Path(env.get("FINLLM_CACHE_DIR") or Path.home() / ".cache" / "finllm")


def work_dir(service: str, env: dict[str, str] | Any = None) -> Path:
    """A worker's own folder for files it must write: FINLLM_WORK_DIR (set by the supervisor that
    started it), else `<cache>/work/<service>`. Never the current directory."""
    env = os.environ if env is None else env
    return Path(env["FINLLM_WORK_DIR"]) if env.get("FINLLM_WORK_DIR") else cache_dir(env) / "work" / service


ROUTING_FILE_ENV = "FINLLM_ROUTING_FILE"


def read_routing_file(path: str | Path) -> dict:
    """A routing file (`routing.json` of an adapter set): `adapters` (name -> folder, relative to the file),
    `routes` (symbol -> adapter name), `default` (adapter for other symbols or null), `sectors`, `task`.
    Both workers read it when FINLLM_ROUTING_FILE names it: the agents route symbols by it, the inference
    worker loads its adapters. Raises ValueError naming the file when it is not one."""
    import json

    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"routing file {path}: {error}") from None
    if not isinstance(data, dict) or not isinstance(data.get("adapters"), dict) \
            or not isinstance(data.get("routes"), dict):
        raise ValueError(f"routing file {path}: needs the objects 'adapters' and 'routes'")
    unknown = {n for n in [*data["routes"].values(), data.get("default")] if n and n not in data["adapters"]}
    if unknown:
        raise ValueError(f"routing file {path}: routes name adapters it does not list: {sorted(unknown)}")
    return data
