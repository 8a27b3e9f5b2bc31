"""`finllm serve`: the paged engine behind an OpenAI-compatible HTTP API (`inference.api`), no Kafka."""
from __future__ import annotations

import click

from agents.cli.options import model_option


@click.command()
@click.option("--host", envvar="FINLLM_HTTP_HOST", default="127.0.0.1", show_default=True)
@click.option("--port", envvar="FINLLM_HTTP_PORT", type=int, default=8000, show_default=True, help="0: a free port.")
@model_option()
@click.option("--adapter", "adapter_specs", multiple=True, metavar="NAME=PATH",
              help="Serve this PEFT adapter as model NAME (repeatable); added to the model's shipped adapters.")
@click.option("--no-adapters", is_flag=True, help="Leave out the adapters shipped for the model.")
@click.option("--device", envvar="FINLLM_DEVICE", help="cpu or cuda (default: cuda when available).")
@click.option("--dtype", envvar="FINLLM_ENGINE_DTYPE", help="Engine dtype (default: float64 on CPU, bfloat16 on CUDA).")
@click.option("--threads", type=int, envvar="FINLLM_TORCH_THREADS", help="torch CPU threads.")
def serve(host: str, port: int, model: str | None, adapter_specs: tuple[str, ...], no_adapters: bool,
          device: str | None, dtype: str | None, threads: int | None) -> None:
    """Serve /v1/models, /v1/completions and /v1/chat/completions (streaming or not), /health and /metrics.
    FINLLM_API_KEYS (comma-separated) requires a bearer key; FINLLM_HTTP_MAX_* set the limits."""
    import asyncio
    import logging

    from inference.adapters.shipped import shipped_routing
    from inference.api.protocol import ApiSettings
    from inference.api.server import serving
    from inference.checkpoints import resolve_model_dir
    from inference.worker import WorkerConfig, configured_scorer

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    named = {}
    for spec in adapter_specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise click.BadParameter(f"{spec!r}: expected NAME=PATH", param_hint="--adapter")
        named[name] = path
    model_dir = str(resolve_model_dir(model))
    routing = None if no_adapters else shipped_routing(model_dir)
    adapters = {name: str(path) for name, path in (routing.adapters if routing else {}).items()} | named
    cfg = WorkerConfig(engine="paged", model_dir=model_dir, adapters=tuple(adapters.items()), device=device,
                       dtype=dtype, torch_threads=threads)
    scorer = configured_scorer(cfg)
    settings = ApiSettings.from_env(host=host, port=port)

    async def run() -> None:
        async with serving(scorer, settings) as (_, url, _scorer):
            click.echo(f"serving {scorer.model_name} and {len(adapters)} adapter(s) on {url}/v1", err=True)
            await asyncio.Event().wait()

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass
