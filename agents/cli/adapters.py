"""`finllm adapters train|build-defaults|list|register|remove`: LoRA adapters from tapes, and the registry.

Training is `agents.lab.training`; the registry is `inference.adapters.registry` in Redis.
"""
from __future__ import annotations

import asyncio
from dataclasses import asdict
from pathlib import Path

import click
import orjson

from agents.cli.options import model_option, prefix_option, redis_option, resolve_redis
from agents.lab import TASKS


@click.group()
def adapters() -> None:
    """Train LoRA adapters on tapes; register them for running inference workers (hot-load)."""


BF16_LOWER_OPTION = click.option("--bf16-lower/--no-bf16-lower", default=None, help="Run the frozen layers under "
                                 "bfloat16 autocast (default: on for every model but tiny).")


@adapters.command()
@click.option("--tape", "tape_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Folder for the PEFT adapter + card.json.")
@model_option("--base")
@click.option("--task", type=click.Choice(TASKS), default="direction", show_default=True)
@click.option("--rank", default=16, show_default=True)
@click.option("--epochs", default=3, show_default=True)
@click.option("--lr", "learning_rate", default=1e-3, show_default=True)
@click.option("--symbols", help="Only these symbols (comma-separated), e.g. one sector.")
@click.option("--init-from", type=click.Path(exists=True, file_okay=False), help="Start from this adapter.")
@click.option("--test-fraction", default=0.2, show_default=True, help="Last share of the tape held out.")
@click.option("--max-steps", type=int, help="Stop after this many optimiser steps.")
@click.option("--threads", type=int, help="torch CPU threads (1 is fastest on a busy machine).")
@click.option("--seed", default=0, show_default=True)
def train(tape_dir: Path, out: Path, model: str | None, task: str, rank: int, epochs: int, learning_rate: float,
          symbols: str | None, init_from: str | None, test_fraction: float, max_steps: int | None,
          threads: int | None, seed: int) -> None:
    """Train a LoRA adapter on a tape's prompts (same code as the agents; labels after each prompt)."""
    from agents.lab.training import TrainingError, set_threads, train_from_tape
    from inference.adapters.train import TrainConfig

    set_threads(threads)
    tcfg = TrainConfig(rank=rank, alpha=2.0 * rank, epochs=epochs, learning_rate=learning_rate,
                       max_steps=max_steps, seed=seed)
    try:
        card = train_from_tape(tape_dir, out, model, task, tcfg, symbols=symbols, init_from=init_from,
                               test_fraction=test_fraction)
    except TrainingError as error:
        raise click.ClickException(str(error)) from None
    click.echo(orjson.dumps({"out": str(out), "metrics": card["metrics"], "training": card["training"]},
                            option=orjson.OPT_INDENT_2).decode())


@adapters.command()
@click.option("--tape", "tape_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Folder for the base tier's adapter.")
@model_option("--base")
@click.option("--teacher", type=click.Path(exists=True, file_okay=False),
              help="The deep tier's adapter (default: the base model alone).")
@click.option("--student", "student_model", help="The base tier's model, a registered name or a folder (default: "
              "the one the model's registry entry names, e.g. smollm2-135m-l8 for smollm2-135m; else the model "
              "itself, starting from the teacher's adapter).")
@click.option("--rank", default=16, show_default=True)
@click.option("--epochs", default=3, show_default=True)
@click.option("--lr", "learning_rate", default=1e-3, show_default=True)
@click.option("--test-fraction", default=0.2, show_default=True, help="Last share of the tape held out.")
@click.option("--max-steps", type=int, help="Stop after this many optimiser steps.")
@BF16_LOWER_OPTION
@click.option("--threads", type=int, help="torch CPU threads (1 is fastest on a busy machine).")
def distill(tape_dir: Path, out: Path, model: str | None, teacher: str | None, student_model: str | None, rank: int,
            epochs: int, learning_rate: float, test_fraction: float, max_steps: int | None,
            bf16_lower: bool | None, threads: int | None) -> None:
    """Train the base tier's adapter (short prompt) to match the deep tier's label distribution (KL loss);
    report agreement and quality against the deep tier on the held-out part, with 95% intervals."""
    from agents.lab.distill import distill_from_tape
    from agents.lab.training import TrainingError, set_threads
    from inference.adapters.train import TrainConfig

    set_threads(threads)
    tcfg = TrainConfig(rank=rank, alpha=2.0 * rank, epochs=epochs, learning_rate=learning_rate, max_steps=max_steps,
                       bf16_lower=_bf16_lower(model, bf16_lower))
    try:
        report = distill_from_tape(tape_dir, out, model, tcfg, teacher=teacher, student_model=student_model,
                                   test_fraction=test_fraction)
    except TrainingError as error:
        raise click.ClickException(str(error)) from None
    click.echo(orjson.dumps({"out": str(out)} | report, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY).decode())


@adapters.command(name="build-defaults")
@click.option("--out", type=click.Path(path_type=Path),
              help="Default: the model's shipped folder, inference/data/adapters/<model name>.")
@model_option()
@click.option("--train-every", default=1, show_default=True,
              help="Train on every n-th training example only (held-out parts stay whole).")
@BF16_LOWER_OPTION
@click.option("--threads", type=int, default=1, show_default=True)
def build_defaults(out: Path | None, model: str | None, train_every: int, bf16_lower: bool | None,
                   threads: int) -> None:
    """Rebuild the shipped adapters: per task, one over all sectors, then one per sector started from it;
    each card holds the fusion weights fitted on its held-out part."""
    from agents.lab.training import build_default_adapters

    made, out = _on_shipped_set(out, model, threads, lambda folder, log: build_default_adapters(
        folder, log, model, train_every=train_every, bf16_lower=_bf16_lower(model, bf16_lower)))
    click.echo(f"{len(made)} adapters and routing.json in {out}")


def _on_shipped_set(out: Path | None, model: str | None, threads: int, work) -> tuple[dict, Path]:
    """`work(folder, log)` on the adapter set of `model` in `out` (default: the model's shipped folder), with
    `threads` torch threads and each log line on stderr; a training error becomes a clean CLI error."""
    from agents.lab.training import TrainingError, set_threads
    from inference.adapters.shipped import shipped_dir
    from inference.checkpoints import registered_name

    set_threads(threads)
    name = registered_name(model)
    if out is None and name is None:
        raise click.UsageError(f"{model} is not a registered model: name its adapters' folder with --out")
    out = (out or shipped_dir(name)).resolve()
    try:
        return work(out, lambda line: click.echo(line, err=True)), out
    except TrainingError as error:
        raise click.ClickException(str(error)) from None


@adapters.command(name="refit-fusion")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False),
              help="Default: the model's shipped folder, inference/data/adapters/<model name>.")
@model_option()
@click.option("--threads", type=int, default=2, show_default=True)
def refit_fusion(out: Path | None, model: str | None, threads: int) -> None:
    """Refit the fusion weights in the shipped adapters' cards on their held-out parts, without training them
    again (after a change to the fit), and rewrite routing.json by the same trust rule as build-defaults."""
    from agents.lab.training import refit_default_fusion

    made, out = _on_shipped_set(out, model, threads, lambda folder, log: refit_default_fusion(folder, log, model))
    click.echo(f"{len(made)} cards refitted and routing.json rewritten in {out}")


# ------------------------------------------------------------------ registry


@adapters.command()
@click.argument("name")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Folder for the merged checkpoint.")
@model_option("--base")
def merge(name: str, out: Path, model: str | None) -> None:
    """Merge adapter NAME (a shipped adapter's name or a PEFT folder) into its base model: a plain Hugging Face
    checkpoint that transformers and the engine load with no adapter."""
    from inference.adapters.merge import MergeError, merge_adapter
    from inference.adapters.shipped import shipped_routing
    from inference.checkpoints import resolve_model_dir

    routing = shipped_routing(model)
    shipped = routing.adapters if routing else {}
    if not Path(name).is_dir() and name not in shipped:
        raise click.BadParameter(f"neither a folder nor a shipped adapter ({', '.join(sorted(shipped))})",
                                 param_hint="NAME")
    try:
        merged = merge_adapter(resolve_model_dir(model), name if Path(name).is_dir() else shipped[name], out)
    except MergeError as error:
        raise click.ClickException(str(error)) from None
    click.echo(str(merged))


@adapters.command(name="list")
@redis_option()
@prefix_option()
def list_cmd(redis_url: str | None, prefix: str) -> None:
    """Registered adapters, one JSON line each, with what the workers last did with them."""
    async def run(registry):
        return await registry.records(), await registry.statuses()

    records, statuses = _with_registry(redis_url, prefix, run)
    for name in sorted(records.keys() | statuses.keys()):
        record, status = records.get(name), statuses.get(name)
        line = {**(asdict(record) if record else {"name": name, "registered": False}),
                "status": asdict(status) if status else None}
        click.echo(orjson.dumps(line).decode())


@adapters.command()
@click.argument("name")
@click.argument("path", type=click.Path(exists=True, file_okay=False))
@click.option("--base-hash", help="Base model hash, when the adapter folder has no card.json.")
@redis_option()
@prefix_option()
def register(name: str, path: str, base_hash: str | None, redis_url: str | None, prefix: str) -> None:
    """Register the adapter folder PATH as NAME; running workers load it within a second or two."""
    from inference.adapters.registry import RegistryError, record_from_folder

    try:
        record = record_from_folder(name, path, base_hash)
    except RegistryError as error:
        raise click.ClickException(str(error)) from None
    stored = _with_registry(redis_url, prefix, lambda registry: registry.register(record))
    click.echo(orjson.dumps(asdict(stored)).decode())


@adapters.command()
@click.argument("name")
@redis_option()
@prefix_option()
def remove(name: str, redis_url: str | None, prefix: str) -> None:
    """Remove NAME from the registry; running workers unload it."""
    if not _with_registry(redis_url, prefix, lambda registry: registry.remove(name)):
        raise click.ClickException(f"no adapter {name!r} is registered")
    click.echo(f"removed {name}")


def _with_registry(redis_url: str | None, prefix: str, action):
    from inference.adapters.registry import AdapterRegistry

    url = resolve_redis(redis_url)

    async def run():
        registry = AdapterRegistry.from_url(url, prefix)
        try:
            return await action(registry)
        finally:
            await registry.close()

    return asyncio.run(run())


def _bf16_lower(model: str | None, chosen: bool | None) -> bool:
    """Whether the frozen layers run under bfloat16 autocast: as chosen, else for every model but tiny."""
    from inference.checkpoints import registered_name

    return registered_name(model) != "tiny" if chosen is None else chosen
