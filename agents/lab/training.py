"""LoRA adapters from tapes: train one on a tape, or rebuild the shipped set (one per sector).

Training examples are the agents' own requests over a tape (`agents.lab.examples`), labelled only
from what happens after each prompt, split by time: the adapter trains on the first part and its
card reports metrics on the last part. The `finllm adapters` commands (agents/cli/adapters.py) wrap this.
"""
from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Callable

import numpy as np

from agents.config import AgentsConfig
from agents.lab.examples import Example, Split, build_examples, label_array, split_by_time
from streams.synth import COMPANIES, SECTOR_OF, synth_tape

# Sectors of the synthetic tickers, in the order of their first company; shipped adapters follow them.
SECTORS: dict[str, tuple[str, ...]] = {
    sector: tuple(ticker for ticker, _ in COMPANIES if SECTOR_OF[ticker] == sector)
    for sector in dict.fromkeys(SECTOR_OF[ticker] for ticker, _ in COMPANIES)}
DEFAULT_TRAIN_TAPE = {"symbols": 20, "minutes": 240, "seed": 11}
ROUTED_TASK = "direction"


class TrainingError(ValueError):
    """The tape gives nothing to train or test on."""


def train_from_tape(tape_dir: Path, out: Path, model: str | None, task: str, tcfg, *, symbols: str | None = None,
                    init_from: str | None = None, test_fraction: float = 0.2) -> dict:
    """Train an adapter for `task` on the tape's prompts (only `symbols`, comma-separated, when given); its card."""
    from streams.tape import Tape

    cfg = AgentsConfig.from_env()
    examples = _only(build_examples(Tape.read(tape_dir, with_truth=task == "sentiment"), cfg, task), symbols)
    split = split_by_time(examples, test_fraction, cfg.horizon_s)
    return train_on_split(_model_dir(model), split, out, tcfg, task=task, tape=str(tape_dir), init_from=init_from)


def train_on_split(model_dir: Path, split: Split, out: Path, tcfg, *, task: str, tape: str,
                   init_from: str | None = None) -> dict:
    """Train on `split.train`, score `split.test` with the trained adapter, write the adapter and its card."""
    from agents.lab.quality import label_frequencies, point_metrics
    from inference.adapters.train import LabelHeadTrainer, base_card, write_card

    if not split.train or not split.test:
        raise TrainingError(f"need examples on both sides of the split: {len(split.train)} train, "
                            f"{len(split.test)} test")
    trainer = LabelHeadTrainer(model_dir, tcfg, init_from)
    stats = trainer.fit(trainer.cache_inputs([e.request.prompt for e in split.train]), [e.label for e in split.train])
    trainer.save(out)
    probs = np.asarray(trainer.predict(trainer.cache_inputs([e.request.prompt for e in split.test])))
    y = label_array(split.test)
    majority = np.tile(label_frequencies(label_array(split.train)), (len(split.test), 1))
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


def _rounded(metrics: dict) -> dict:
    return {k: round(v, 4) for k, v in metrics.items()}


def _only(examples: list[Example], symbols: str | None) -> list[Example]:
    if not symbols:
        return examples
    wanted = {s.strip() for s in symbols.split(",") if s.strip()}
    return [e for e in examples if e.request.symbol in wanted]


def set_threads(threads: int | None) -> None:
    """Let torch use this many CPU threads (None: its default)."""
    if threads:
        import torch
        torch.set_num_threads(threads)


def _model_dir(model: str | None) -> Path:
    from inference.checkpoints import resolve_model_dir

    return resolve_model_dir(model)


def build_default_adapters(out: Path, log: Callable[[str], None]) -> dict[str, Path]:
    """Rebuild the shipped adapters in `out`: per task, one over all sectors, then one per sector started
    from it; writes routing.json and returns adapter name -> folder. `log` gets a line per adapter."""
    from inference.adapters.shipped import Routing, write_routing
    from inference.adapters.train import TrainConfig

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
        made[f"{task}-all"] = _build(model_dir, split, out / f"{task}-all", first, task, tape_name, init, log)
        for sector, symbols in SECTORS.items():
            part = Split(*(tuple(e for e in side if e.request.symbol in symbols) for side in (split.train, split.test)),
                         split.split_ts_ns)
            made[f"{task}-{sector}"] = _build(model_dir, part, out / f"{task}-{sector}", then, task, tape_name,
                                             str(made[f"{task}-all"]), log)
    # The pipeline routes to the sentiment adapters: on the synthetic tapes they carry the news signal
    # (the direction fine-tunes come out calibrated but close to uniform; see bench/RESULTS.md).
    routes = {s: f"{ROUTED_TASK}-{sector}" for sector, symbols in SECTORS.items() for s in symbols}
    write_routing(out, Routing(made, routes, f"{ROUTED_TASK}-all", SECTORS, ROUTED_TASK))
    return made


def _build(model_dir: Path, split: Split, out: Path, tcfg, task: str, tape: str, init: str | None,
           log: Callable[[str], None]) -> Path:
    started = time.perf_counter()
    card = train_on_split(model_dir, split, out, tcfg, task=task, tape=tape, init_from=init)
    log(f"{out.name}: {len(split.train)} train / {len(split.test)} test examples, "
        f"{time.perf_counter() - started:.0f} s, test {card['metrics']['test']}")
    return out
