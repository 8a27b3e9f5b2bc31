"""`finllm explain SYMBOL`: the model explains the symbol's latest forecast, streamed as it writes.

With --url it asks a running HTTP API (`finllm serve --redis URL`, or the inference worker's with
FINLLM_HTTP_PORT), which reads the forecast from its Redis. Without it the command loads the model here,
with the adapters the worker serves (shipped for the model, and FINLLM_ROUTING_FILE /
FINLLM_ADAPTER_PATHS), reads the forecast from --redis, and serves itself the same route in-process.
"""
from __future__ import annotations

import asyncio
import sys

import click
import orjson

from agents.cli.options import model_option, prefix_option, redis_option, resolve_redis


@click.command()
@click.argument("symbol")
@click.option("--url", envvar="FINLLM_API_URL",
              help="A running HTTP API, e.g. http://127.0.0.1:8000 (default: load the model here).")
@click.option("--api-key", envvar="FINLLM_API_KEY", help="Bearer key for --url (when the server needs one).")
@click.option("--max-tokens", type=int, help="Length of the explanation (default: the server's, 160 tokens).")
@redis_option("Redis URL of the stack (without --url).")
@prefix_option()
@model_option()
def explain(symbol: str, url: str | None, api_key: str | None, max_tokens: int | None, redis_url: str | None,
            prefix: str, model: str | None) -> None:
    """Explain the latest forecast of SYMBOL from the news and market data it was made on (nothing newer),
    through the symbol's adapter; the answer streams as it is generated."""
    body = {"stream": True} | ({"max_tokens": max_tokens} if max_tokens is not None else {})
    if url:
        asyncio.run(stream_explanation(url, symbol, body, api_key))
    else:
        asyncio.run(_explain_here(symbol, body, resolve_redis(redis_url), prefix, model))
    click.echo()


async def _explain_here(symbol: str, body: dict, redis_url: str, prefix: str, model: str | None) -> None:
    from agents.cli.serve import engine_scorer
    from inference.api.protocol import ApiSettings
    from inference.api.server import serving
    from inference.worker import WorkerConfig
    from streams.latest import LatestStore

    scorer, _ = engine_scorer(model, dict(WorkerConfig.from_env().adapters))
    latest = LatestStore.from_url(redis_url, prefix)
    try:
        async with serving(scorer, ApiSettings(port=0), latest=latest) as (_, url, _shared):
            await stream_explanation(url, symbol, body, None)
    finally:
        await latest.close()
        scorer.close()


async def stream_explanation(url: str, symbol: str, body: dict, api_key: str | None) -> None:
    """POST /v1/explain/SYMBOL and write the text as its events arrive; a click error for an error answer."""
    from urllib.parse import quote

    import aiohttp

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    endpoint = f"{url.rstrip('/')}/v1/explain/{quote(symbol, safe='')}"
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=10)) as session:
            async with session.post(endpoint, json=body, headers=headers) as response:
                if response.status != 200:
                    raise click.ClickException(_error_message(await response.read(), response.status))
                async for line in response.content:
                    data = line.strip().removeprefix(b"data: ")
                    if not data or data == line.strip():
                        continue
                    if data == b"[DONE]":
                        return
                    event = orjson.loads(data)
                    if "error" in event:
                        raise click.ClickException(event["error"].get("message", "the server failed"))
                    for choice in event.get("choices", []):
                        sys.stdout.write(choice.get("text") or "")
                        sys.stdout.flush()
                    _warn_ungrounded(event.get("grounding"))
    except aiohttp.ClientError as error:
        raise click.ClickException(f"could not reach {url}: {error}") from None


def _warn_ungrounded(grounding: dict | None) -> None:
    """Numbers the explanation states that its inputs never held: the model made them up."""
    numbers = (grounding or {}).get("ungrounded_numbers")
    if numbers:
        click.echo(f"\nwarning: not in the forecast's inputs, so made up by the model: {', '.join(numbers)}",
                   err=True)


def _error_message(raw: bytes, status: int) -> str:
    try:
        return orjson.loads(raw)["error"]["message"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return f"HTTP {status}: {raw[:200].decode(errors='replace')}"
