"""`finllm adapters train|build-defaults|list|register|remove`: LoRA adapters from tapes, and the registry.

Training examples are the agents' own requests over a tape (`agents.examples`), labelled only
from what happens after each prompt, split by time: the adapter trains on the first part and its
card reports metrics on the last part.
"""
from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import click
import numpy as np
import orjson

from agents.config import AgentsConfig
from agents.examples import TASKS, Example, Split, build_examples, split_by_time

# Sectors of the synthetic tickers (streams.synth.COMPANIES), by company name; shipped adapters follow them.
SECTORS: dict[str, tuple[str, ...]] = {
    "industrials": ("ACME", "EMBR", "GRID", "HALO", "KITE", "MESA", "TIDE", "DUNE", "KEEL", "TRAK", "ATLS",
                    "CORE", "VRTX", "ZINC", "MOSS", "SOLR", "GUST"),
    "technology": ("BOLT", "FLUX", "IONX", "LUMO", "ORBT", "QUIL", "RIFT", "UMBR", "WISP", "YARD", "ECHO",
                   "HIVE", "IRIS", "JOLT", "LYNX", "PRSM", "WAVE", "XYLO", "EDGE", "BEAM", "ARCX"),
    "healthcare": ("CRUX", "NOVA", "SAGE", "XENO", "UNIT", "HELX", "FERN"),
    "consumer": ("DYNO", "JADE", "PIKE", "VALE", "ZEST", "BRIO", "CASK", "GLOW", "OPAL", "NEXO", "QUAY",
                 "ROVR", "DART", "YETI", "FORT"),
}
DEFAULT_TRAIN_TAPE = {"symbols": 20, "minutes": 240, "seed": 11}
ROUTED_TASK = "direction"


@click.group()
def adapters() -> None:
    """Train LoRA adapters on tapes; register them for running inference workers (hot-load)."""


@adapters.command()
@click.option("--tape", "tape_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Folder for the PEFT adapter + card.json.")
@click.option("--base", "model", envvar="FINLLM_MODEL", help="Base model folder (default: the embedded tiny model).")
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
    from inference.adapters.train import TrainConfig
    from streams.tape import Tape

    _threads(threads)
    cfg = AgentsConfig.from_env()
    examples = _only(build_examples(Tape.read(tape_dir, with_truth=task == "sentiment"), cfg, task), symbols)
    split = split_by_time(examples, test_fraction, cfg.horizon_s)
    tcfg = TrainConfig(rank=rank, alpha=2.0 * rank, epochs=epochs, learning_rate=learning_rate,
                       max_steps=max_steps, seed=seed)
    card = train_on_split(_model_dir(model), split, out, tcfg, task=task, tape=str(tape_dir), init_from=init_from)
    click.echo(orjson.dumps({"out": str(out), "metrics": card["metrics"], "training": card["training"]},
                            option=orjson.OPT_INDENT_2).decode())


def train_on_split(model_dir: Path, split: Split, out: Path, tcfg, *, task: str, tape: str,
                   init_from: str | None = None) -> dict:
    """Train on `split.train`, score `split.test` with the trained adapter, write the adapter and its card."""
    from agents.quality import point_metrics
    from inference.adapters.train import LabelHeadTrainer, base_card, write_card

    if not split.train or not split.test:
        raise click.ClickException(f"need examples on both sides of the split: {len(split.train)} train, "
                                   f"{len(split.test)} test")
    trainer = LabelHeadTrainer(model_dir, tcfg, init_from)
    stats = trainer.fit(trainer.cache_inputs([e.request.prompt for e in split.train]), [e.label for e in split.train])
    trainer.save(out)
    probs = np.asarray(trainer.predict(trainer.cache_inputs([e.request.prompt for e in split.test])))
    y = _label_index(split.test)
    majority = np.tile(_frequencies(split.train), (len(split.test), 1))
    card = base_card(model_dir, tcfg, stats) | {
        "name": out.name, "task": task, "init_from": init_from, "data": _data_card(split, tape),
        "metrics": {"test": _rounded(point_metrics(probs, y)), "majority": _rounded(point_metrics(majority, y))}}
    write_card(out, card)
    return card


def _data_card(split: Split, tape: str) -> dict:
    return {"tape": tape, "symbols": sorted({e.request.symbol for e in split.train + split.test}),
            "train_ts_ns": [split.train[0].ts_ns, split.train[-1].ts_ns],
            "test_ts_ns": [split.test[0].ts_ns, split.test[-1].ts_ns], "split_ts_ns": split.split_ts_ns,
            "train_examples": len(split.train), "test_examples": len(split.test),
            "train_labels": dict(Counter(e.label for e in split.train)),
            "test_labels": dict(Counter(e.label for e in split.test))}


def _label_index(examples: Sequence[Example]) -> np.ndarray:
    from schemas import DIRECTIONS as LABELS

    return np.asarray([LABELS.index(e.label) for e in examples])


def _frequencies(examples: Sequence[Example]) -> np.ndarray:
    counts = np.bincount(_label_index(examples), minlength=3).astype(float) + 1.0
    return counts / counts.sum()


def _rounded(metrics: dict) -> dict:
    return {k: round(v, 4) for k, v in metrics.items()}


def _only(examples: list[Example], symbols: str | None) -> list[Example]:
    if not symbols:
        return examples
    wanted = {s.strip() for s in symbols.split(",") if s.strip()}
    return [e for e in examples if e.request.symbol in wanted]


def _threads(threads: int | None) -> None:
    if threads:
        import torch
        torch.set_num_threads(threads)


def _model_dir(model: str | None) -> Path:
    from inference.checkpoints import resolve_model_dir

    return resolve_model_dir(model)


@adapters.command(name="build-defaults")
@click.option("--out", type=click.Path(path_type=Path), help="Default: the shipped folder inference/data/adapters.")
@click.option("--threads", type=int, default=1, show_default=True)
def build_defaults(out: Path | None, threads: int) -> None:
    """Rebuild the shipped adapters: per task, one over all sectors, then one per sector started from it."""
    from inference.adapters.shipped import SHIPPED_DIR, Routing, write_routing
    from inference.adapters.train import TrainConfig
    from streams.synth import synth_tape

    _threads(threads)
    out = (out or SHIPPED_DIR).resolve()
    cfg, model_dir = AgentsConfig(), _model_dir(None)
    tape = synth_tape(**DEFAULT_TRAIN_TAPE)
    tape_name = "synth_tape({symbols}, {minutes}, seed={seed})".format(**DEFAULT_TRAIN_TAPE)
    made: dict[str, Path] = {}
    for task, first, then in (("sentiment", TrainConfig(rank=16, alpha=32, epochs=20, learning_rate=3e-3),
                               TrainConfig(rank=16, alpha=32, epochs=3, learning_rate=1e-3)),
                              ("direction", TrainConfig(rank=16, alpha=32, epochs=3, learning_rate=1e-3),
                               TrainConfig(rank=16, alpha=32, epochs=1, learning_rate=5e-4))):
        split = split_by_time(build_examples(tape, cfg, task), 0.2, cfg.horizon_s)
        init = str(made["sentiment-all"]) if task == "direction" else None
        made[f"{task}-all"] = _build(model_dir, split, out / f"{task}-all", first, task, tape_name, init)
        for sector, symbols in SECTORS.items():
            part = Split(*(tuple(e for e in side if e.request.symbol in symbols) for side in (split.train, split.test)),
                         split.split_ts_ns)
            made[f"{task}-{sector}"] = _build(model_dir, part, out / f"{task}-{sector}", then, task, tape_name,
                                             str(made[f"{task}-all"]))
    # The pipeline routes to the sentiment adapters: on the synthetic tapes they carry the news signal
    # (the direction fine-tunes come out calibrated but close to uniform; see bench/RESULTS.md).
    routes = {s: f"{ROUTED_TASK}-{sector}" for sector, symbols in SECTORS.items() for s in symbols}
    write_routing(out, Routing(made, routes, f"{ROUTED_TASK}-all", SECTORS, ROUTED_TASK))
    click.echo(f"{len(made)} adapters and routing.json in {out}")


def _build(model_dir: Path, split: Split, out: Path, tcfg, task: str, tape: str, init: str | None) -> Path:
    started = time.perf_counter()
    card = train_on_split(model_dir, split, out, tcfg, task=task, tape=tape, init_from=init)
    click.echo(f"{out.name}: {len(split.train)} train / {len(split.test)} test examples, "
               f"{time.perf_counter() - started:.0f} s, test {card['metrics']['test']}", err=True)
    return out


# ------------------------------------------------------------------ registry


redis_option = click.option("--redis", "redis_url", envvar="FINLLM_REDIS_URL", help="Redis URL.")
prefix_option = click.option("--prefix", envvar="FINLLM_TOPIC_PREFIX", default="",
                             help="Key prefix (the deployment's topic prefix).")


@adapters.command(name="list")
@redis_option
@prefix_option
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
@redis_option
@prefix_option
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
@redis_option
@prefix_option
def remove(name: str, redis_url: str | None, prefix: str) -> None:
    """Remove NAME from the registry; running workers unload it."""
    if not _with_registry(redis_url, prefix, lambda registry: registry.remove(name)):
        raise click.ClickException(f"no adapter {name!r} is registered")
    click.echo(f"removed {name}")


def _with_registry(redis_url: str | None, prefix: str, action):
    from inference.adapters.registry import AdapterRegistry
    from streams.settings import redis_url_from_env

    try:
        url = redis_url_from_env(redis_url)
    except ValueError as error:
        raise click.UsageError(str(error)) from None

    async def run():
        registry = AdapterRegistry.from_url(url, prefix)
        try:
            return await action(registry)
        finally:
            await registry.close()

    return asyncio.run(run())

