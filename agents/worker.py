"""`python -m agents.worker`: run the Faust agents worker with settings from the environment."""
from __future__ import annotations

import logging
import os

import faust

from agents.app import create_app
from agents.config import AgentsConfig
from streams.ports import free_port
from streams.settings import KafkaSettings, work_dir


def main() -> None:
    kafka = KafkaSettings.from_env()
    web_port = int(os.environ.get("FINLLM_AGENTS_WEB_PORT") or free_port())
    app_id = os.environ.get("FINLLM_AGENTS_APP_ID", "finllm-agents")
    datadir = work_dir("agents") / f"{app_id}-data"
    datadir.parent.mkdir(parents=True, exist_ok=True)   # Faust makes the last level only
    app = create_app(kafka, AgentsConfig.from_env(), web_port=web_port, app_id=app_id, datadir=datadir,
                     redis_url=os.environ.get("FINLLM_REDIS_URL") or None)
    level = os.environ.get("FINLLM_LOG_LEVEL", "INFO")
    logging.getLogger("faust").setLevel(level)
    logging.getLogger("finllm").setLevel(os.environ.get("FINLLM_AGENTS_LOG_LEVEL", level))
    faust.Worker(app, loglevel=level, quiet=True).execute_from_commandline()


if __name__ == "__main__":
    main()
