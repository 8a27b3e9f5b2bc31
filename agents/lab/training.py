"""LoRA adapters from tapes: train one on a tape, or rebuild the shipped set (one per sector).

Training examples are the agents' own requests over a tape (`agents.lab.examples`), labelled only
from what happens after each prompt, split by time: the adapter trains on the first part and its
card reports metrics on the last part. The `finllm adapters` commands (agents/cli/adapters.py) wrap this.
"""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from agents.config import AgentsConfig
from agents.lab.examples import (Example, Split, build_examples, label_array, label_requests,
                                 requests_from_tape, split_by_time)
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
                   init_from: str | None = None, cache=None, fusion_rows: Sequence[Example] | None = None) -> dict:
    """Train on `split.train`, score `split.test` with the trained adapter, write the adapter and its card.

    `cache`: an `InputCache` shared with the other adapters of the same base (each prompt then runs
    through the frozen layers once). The card's `fusion` holds the fusion weights fitted on held-out
    direction examples (`fusion_rows`; default: `split.test` of a direction adapter), see `fit_fusion`."""
    from agents.lab.quality import label_frequencies, point_metrics
    from inference.adapters.train import InputCache, LabelHeadTrainer, base_card, write_card

    if not split.train or not split.test:
        raise TrainingError(f"need examples on both sides of the split: {len(split.train)} train, "
                            f"{len(split.test)} test")
    cache = cache if cache is not None else InputCache()
    trainer = LabelHeadTrainer(model_dir, tcfg, init_from)
    stats = trainer.fit(cache.inputs(trainer, _prompts(split.train)), [e.label for e in split.train])
    trainer.save(out)
    probs = np.asarray(trainer.predict(cache.inputs(trainer, _prompts(split.test))))
    y = label_array(split.test)
    majority = np.tile(label_frequencies(label_array(split.train)), (len(split.test), 1))
    card = base_card(model_dir, tcfg, stats) | {
        "name": out.name, "task": task, "init_from": init_from, "data": _data_card(split, tape),
        "metrics": {"test": _rounded(point_metrics(probs, y)), "majority": _rounded(point_metrics(majority, y))}}
    rows = split.test if fusion_rows is None and task == "direction" else fusion_rows or ()
    card["fusion"] = fit_fusion(trainer, cache, rows, read_card_fusion(init_from))
    write_card(out, card)
    return card


def _prompts(examples: Sequence[Example]) -> list[str]:
    return [e.request.prompt for e in examples]


def fit_fusion(trainer, cache, rows: Sequence[Example], fallback: dict | None = None) -> dict:
    """The adapter's fusion weights (`inference.fusion.fit_discounted`) on held-out direction examples,
    separately for prompts with news and without; a side with too few rows keeps `fallback`'s (the card
    of the adapter this one started from) when there is one."""
    from agents.lab.evaluate import example_clusters, numeric_array
    from inference.fusion import MIN_FIT_ROWS, AdapterFusion, fit_discounted

    fitted, seen = {}, {}
    for side, part in (("news", [e for e in rows if e.request.news_ids]),
                       ("no_news", [e for e in rows if not e.request.news_ids])):
        llm = np.asarray(trainer.predict(cache.inputs(trainer, _prompts(part)))) if part else np.zeros((0, 3))
        weights, seen[side] = fit_discounted(numeric_array(part).reshape(-1, 3), llm, label_array(part),
                                             example_clusters(part))
        if seen[side]["rows"] < MIN_FIT_ROWS and fallback:
            weights = AdapterFusion.from_json(fallback).weights(side == "news")
            seen[side]["inherited"] = True
        fitted[side] = weights
    return AdapterFusion(fitted["news"], fitted["no_news"]).to_json() | {"fit": seen}


def read_card_fusion(adapter_dir: str | None) -> dict | None:
    from inference.adapters.cards import read_card

    return read_card(adapter_dir).get("fusion") if adapter_dir else None


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


def build_default_adapters(out: Path, log: Callable[[str], None], model: str | None = None, *,
                           train_every: int = 1, bf16_lower: bool = False) -> dict[str, Path]:
    """Rebuild the shipped adapters of base `model` (None: the default) in `out`: per task, one over all
    sectors, then one per sector started from it; writes routing.json and returns adapter name -> folder.
    `train_every`: train on every n-th training example only (a larger model costs more per prompt; the
    held-out parts stay whole). `log` gets a line per adapter."""
    from inference.adapters.train import InputCache, TrainConfig

    model_dir = _model_dir(model)
    splits = {task: _thinned(split, train_every) for task, split in _default_splits().items()}
    cache, made = InputCache(), {}
    base = TrainConfig(rank=16, alpha=32, bf16_lower=bf16_lower)
    for task, first, then in (("sentiment", replace(base, epochs=20, learning_rate=3e-3),
                               replace(base, epochs=3, learning_rate=1e-3)),
                              ("direction", replace(base, epochs=3, learning_rate=1e-3),
                               replace(base, epochs=1, learning_rate=5e-4))):
        init = str(made["sentiment-all"]) if task == "direction" else None
        for sector, symbols in {"all": None, **SECTORS}.items():
            name = f"{task}-{sector}"
            made[name] = _build(model_dir, _sector(splits[task], symbols), out / name, first if symbols is None else then,
                                task, DEFAULT_TRAIN_TAPE_NAME, init if symbols is None else str(made[f"{task}-all"]),
                                log, cache, _sector(splits["direction"], symbols).test)
    _write_default_routing(out, made)
    return made


DEFAULT_TRAIN_TAPE_NAME = "synth_tape({symbols}, {minutes}, seed={seed})".format(**DEFAULT_TRAIN_TAPE)


def _default_splits(tasks: tuple[str, ...] = ("sentiment", "direction")) -> dict[str, Split]:
    """The shipped adapters' examples per task, split by time: the last 20% of the default training tape held out."""
    cfg = AgentsConfig()
    tape = synth_tape(**DEFAULT_TRAIN_TAPE)
    requests = requests_from_tape(tape, cfg)
    return {task: split_by_time(label_requests(tape, requests, cfg, task), 0.2, cfg.horizon_s) for task in tasks}


def _write_default_routing(out: Path, made: dict[str, Path]) -> None:
    from inference.adapters.shipped import Routing, write_routing

    write_routing(out, Routing(made, trusted_routes(made), f"{ROUTED_TASK}-all", SECTORS, ROUTED_TASK))


def refit_default_fusion(out: Path, log: Callable[[str], None], model: str | None = None) -> dict[str, Path]:
    """Refit the `fusion` of every adapter in the shipped folder `out` (built by `build_default_adapters` for
    base `model`) on the held-out part it was fitted on at build time (its card's symbols, the default tape's
    last 20%), without training it again, and rewrite routing.json by the same trust rule. For when the
    fusion's fit changes; returns adapter name -> folder."""
    from inference.adapters.cards import read_card
    from inference.adapters.shipped import load_routing
    from inference.adapters.train import InputCache, LabelHeadTrainer, TrainConfig, write_card

    model_dir, direction = _model_dir(model), _default_splits(("direction",))["direction"]
    made = dict(load_routing(out).adapters)
    cache = InputCache()
    for name, folder in made.items():
        card = read_card(folder)
        if card.get("data", {}).get("tape") != DEFAULT_TRAIN_TAPE_NAME:
            raise TrainingError(f"{name} was not trained on the default tape ({card.get('data', {}).get('tape')}): "
                                f"refit it where it was built")
        tcfg = TrainConfig(rank=card["rank"], alpha=card["alpha"], **card["train_config"])
        trainer = LabelHeadTrainer(model_dir, tcfg, folder)
        before = card.get("fusion")
        card["fusion"] = fit_fusion(trainer, cache, _sector(direction, tuple(card["data"]["symbols"])).test,
                                    read_card_fusion(card.get("init_from")))   # None where that folder is gone
        write_card(folder, card)
        log(f"{name}: fusion {_brief(before)} -> {_brief(card['fusion'])}")
    _write_default_routing(out, made)
    return made


def _brief(fusion: dict | None) -> str:
    if not fusion:
        return "-"
    return ", ".join(f"{side} {w['numeric']:.2f}/{w['llm']:.2f}" + (f" b {w['bias']}" if "bias" in w else "")
                     for side, w in ((side, fusion[side]) for side in ("news", "no_news")))


def trusted_routes(made: dict[str, Path]) -> dict[str, str]:
    """Symbol -> adapter of the routed task: its sector's, unless that one's held-out fusion fit did not trust
    it (LLM weight 0 on prompts with news: a sector fine-tune's few hundred held-out forecasts may not show a
    gain) while the all-sector adapter's did; then the all-sector one. Adapters without a fitted `fusion`
    (older cards) count as trusted."""
    from inference.adapters.cards import read_card

    def trusted(name: str) -> bool:
        fusion = read_card(made[name]).get("fusion")
        return fusion is None or fusion["news"]["llm"] > 0

    fallback = f"{ROUTED_TASK}-all"
    return {symbol: name if trusted(name) or not trusted(fallback) else fallback
            for sector, symbols in SECTORS.items() for symbol in symbols
            for name in [f"{ROUTED_TASK}-{sector}"]}


def _thinned(split: Split, every: int) -> Split:
    return split if every <= 1 else Split(split.train[::every], split.test, split.split_ts_ns)


def _sector(split: Split, symbols: tuple[str, ...] | None) -> Split:
    """`split` restricted to `symbols` (None: all)."""
    if symbols is None:
        return split
    return Split(*(tuple(e for e in side if e.request.symbol in symbols) for side in (split.train, split.test)),
                 split.split_ts_ns)


def _build(model_dir: Path, split: Split, out: Path, tcfg, task: str, tape: str, init: str | None,
           log: Callable[[str], None], cache, fusion_rows: Sequence[Example]) -> Path:
    """Train one shipped adapter; its card also gets the build's wall time (the frozen layers' forward of
    the prompts first seen here included), the CPU threads and the size of its weights."""
    import torch

    from inference.adapters.train import WEIGHTS_NAME, write_card

    started = time.perf_counter()
    card = train_on_split(model_dir, split, out, tcfg, task=task, tape=tape, init_from=init, cache=cache,
                          fusion_rows=fusion_rows)
    seconds = time.perf_counter() - started
    card = card | {"build": {"wall_seconds": round(seconds, 1), "torch_threads": torch.get_num_threads(),
                                       "weights_bytes": (out / WEIGHTS_NAME).stat().st_size}}
    write_card(out, card)
    fusion = {side: card["fusion"][side]["llm"] for side in ("news", "no_news")}
    log(f"{out.name}: {len(split.train)} train / {len(split.test)} test examples, {seconds:.0f} s, "
        f"test {card['metrics']['test']}, fusion llm weight {fusion}")
    return out
