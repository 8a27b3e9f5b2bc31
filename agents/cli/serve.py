"""`finllm serve`: the paged engine behind an OpenAI-compatible HTTP API (`inference.api`), no Kafka."""
from __future__ import annotations

import click

from agents.cli.options import model_option, prefix_option, redis_option


@click.command()
@click.option("--host", envvar="FINLLM_HTTP_HOST", default="127.0.0.1", show_default=True)
@click.option("--port", envvar="FINLLM_HTTP_PORT", type=int, default=8000, show_default=True, help="0: a free port.")
@model_option()
@click.option("--adapter", "adapter_specs", multiple=True, metavar="NAME=PATH",
              help="Serve this PEFT adapter as model NAME (repeatable); added to the model's shipped adapters.")
@click.option("--no-adapters", is_flag=True, help="Leave out the adapters shipped for the model.")
@click.option("--device", envvar="FINLLM_DEVICE", help="cpu or cuda (default: cuda when available).")
@click.option("--dtype", envvar="FINLLM_ENGINE_DTYPE", help="Engine dtype (default: bfloat16 on CUDA and on CPUs with native bf16, else float32).")
@click.option("--quant", type=click.Choice(["none", "int8", "auto"]), envvar="FINLLM_ENGINE_QUANT",
              help="int8: the model's matrices in int8 (CPU); auto: int8 on CPUs without native bf16 (default none).")
@click.option("--threads", type=int, envvar="FINLLM_TORCH_THREADS", help="torch CPU threads.")
@redis_option("Redis URL of the stack whose latest forecasts /v1/explain/SYMBOL explains (none: no explain).")
@prefix_option()
def serve(host: str, port: int, model: str | None, adapter_specs: tuple[str, ...], no_adapters: bool,
          device: str | None, dtype: str | None, quant: str | None, threads: int | None, redis_url: str | None,
          prefix: str) -> None:
    """Serve /v1/models, /v1/completions and /v1/chat/completions (streaming or not), /v1/explain/SYMBOL
    (with --redis), /health and /metrics. FINLLM_API_KEYS (comma-separated) requires a bearer key;
    FINLLM_HTTP_MAX_* set the limits."""
    import asyncio
    import logging

    from inference.api.protocol import ApiSettings
    from inference.api.server import serving
    from streams.latest import LatestStore

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    named = {}
    for spec in adapter_specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise click.BadParameter(f"{spec!r}: expected NAME=PATH", param_hint="--adapter")
        named[name] = path
    scorer, adapters = engine_scorer(model, named, no_adapters, device=device, dtype=dtype, quant=quant,
                                     threads=threads)
    settings = ApiSettings.from_env(host=host, port=port)

    async def run() -> None:
        latest = LatestStore.from_url(redis_url, prefix) if redis_url else None
        try:
            async with serving(scorer, settings, latest=latest) as (_, url, _scorer):
                click.echo(f"serving {scorer.model_name} and {len(adapters)} adapter(s) on {url}/v1", err=True)
                await asyncio.Event().wait()
        finally:
            if latest is not None:
                await latest.close()

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass


def engine_scorer(model: str | None, named: dict[str, str], no_adapters: bool = False, *, device: str | None = None,
                  dtype: str | None = None, quant: str | None = None, threads: int | None = None):
    """The paged engine's scorer for `model` with its shipped adapters (unless `no_adapters`) and the `named`
    ones (NAME -> PATH, these win): (scorer, {name: path})."""
    from inference.adapters.shipped import shipped_routing
    from inference.checkpoints import resolve_model_dir
    from inference.worker import WorkerConfig, configured_scorer

    model_dir = str(resolve_model_dir(model))
    routing = None if no_adapters else shipped_routing(model_dir)
    adapters = {name: str(path) for name, path in (routing.adapters if routing else {}).items()} | named
    cfg = WorkerConfig(engine="paged", model_dir=model_dir, adapters=tuple(adapters.items()), device=device,
                       dtype=dtype, quant=quant, torch_threads=threads)
    return configured_scorer(cfg), adapters
