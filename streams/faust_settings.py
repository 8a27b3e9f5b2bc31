"""faust.App keyword arguments that make a worker behave on Tansu.

Measured on Tansu 0.6 (memory storage) with faust-streaming 0.15:

* Joining a consumer group takes about session_timeout / 2 (rounded up to
  whole seconds) whatever the rebalance timeout, so a 2 s session joins in
  ~1 s; the Faust default (10 s) takes 5 s, and a worker restarted after a
  crash waits ~18 s for partitions instead of ~2 s.
* Heartbeats run on Faust's consumer thread, so agent code that keeps the
  event loop busy does not starve them.
* Idempotent and transactional producers fail (InitProducerId v0), so
  processing stays at-least-once and the producer is never idempotent.
* Faust declares no topics here: every topic is pre-created with
  `streams.admin.ensure_topics` (Tansu would auto-create 4 partitions).
* `faust.Worker(app)` honours web_enabled=False; the `faust worker` CLI turns
  the web server back on unless given --without-web, hence a free port.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

DEFAULT_SESSION_TIMEOUT_S = 2.0
HEARTBEATS_PER_SESSION = 4
COMMIT_INTERVAL_S = 0.5


def faust_broker_settings(
    bootstrap: str,
    *,
    web_port: int,
    session_timeout_s: float = DEFAULT_SESSION_TIMEOUT_S,
    datadir: Path | None = None,
) -> dict[str, Any]:
    """Keyword arguments for `faust.App(app_id, **settings)` against Tansu.

    `bootstrap` is "host:port"; `web_port` must be free (one per worker).
    `datadir` defaults to Faust's "<app_id>-data" in the working directory.
    """
    settings: dict[str, Any] = {
        "broker": f"kafka://{bootstrap}",
        "processing_guarantee": "at_least_once",  # exactly_once needs transactions
        "consumer_auto_offset_reset": "earliest",
        "broker_commit_interval": COMMIT_INTERVAL_S,
        **_group_timeouts(session_timeout_s),
        **_no_internal_topics(),
        **_no_web_server(web_port),
    }
    if datadir is not None:
        settings["datadir"] = str(datadir)
    return settings


def _group_timeouts(session_timeout_s: float) -> dict[str, float]:
    """Short session: fast join, and a crashed member is evicted quickly."""
    return {
        "broker_session_timeout": session_timeout_s,
        "broker_heartbeat_interval": session_timeout_s / HEARTBEATS_PER_SESSION,
        "broker_rebalance_timeout": session_timeout_s,
    }


def _no_internal_topics() -> dict[str, Any]:
    """No leader topic, no topic declaration, no standby changelog readers."""
    return {
        "topic_disable_leader": True,
        "topic_allow_declare": False,
        "topic_replication_factor": 1,
        "table_standby_replicas": 0,  # plain round-robin partition assignor
        "store": "memory://",
    }


def _no_web_server(web_port: int) -> dict[str, Any]:
    return {"web_enabled": False, "web_port": web_port, "web_bind": "127.0.0.1"}
