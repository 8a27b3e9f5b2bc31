"""Honest forecast evaluation: replay the held-out last part of a tape through the pipeline's code.

Requests are what the agents send (`agents.lab.examples`: the offline processor, same prompts, same
numeric forecast, same adapter routing); a `Scorer` scores them and `inference.fusion.fuse`
fuses them, exactly as the inference worker does, only without the broker. Labels are the moves
after each prompt's time. Every metric carries a 95% cluster-bootstrap interval (clusters: one
symbol over `cluster_s` of event time). Baselines are fitted on the training part only.

Rows: numeric; the language model zero-shot (`llm_zero_shot`: the same prompts, no adapter); with its
routed adapter (`llm`); fused (each forecast with its adapter's fitted weights, as the worker fuses:
`FusionPolicy.weights_for`); the baselines. `targets` says which of issue #15's targets the figures meet.
`max_forecasts` evaluates an evenly spaced subset of the held-out forecasts (a large model on a CPU).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, fields, replace
from typing import Sequence

import numpy as np
import polars as pl

from agents.config import NS_PER_S, AgentsConfig
from agents.lab.examples import Example, build_examples, label_array, split_by_time
from agents.features import Features
from agents.lab.quality import (accuracy, cluster_resamples, evaluate_forecast, interval, label_frequencies,
                                paired_difference)
from agents.signal import numeric_probs
from inference.fusion import FusionPolicy, FusionWeights, fit_weights, fuse_arrays
from inference.scorers.base import ScoreItem, Scorer
from schemas import DIRECTIONS
from streams.tape import Tape

FORECASTS = ("numeric", "llm_zero_shot", "llm", "fused")
BASELINES = ("majority", "momentum_sign", "random_walk")


@dataclass(frozen=True, slots=True)
class EvalOptions:
    test_fraction: float = 0.3
    n_boot: int = 1000
    seed: int = 0
    cluster_s: int = 300
    batch_size: int = 64
    policy: FusionPolicy = field(default_factory=FusionPolicy)   # per adapter and news / no news
    fit_weights: bool = False   # fit global fusion weights on the training part (log-loss) instead of `policy`
    max_forecasts: int | None = None   # evaluate at most this many held-out forecasts (evenly spaced)
    fit_max: int = 2000         # at most this many training forecasts scored for that fit (evenly spaced)


@dataclass(frozen=True, slots=True)
class Evaluation:
    report: dict            # what eval.json holds
    frame: pl.DataFrame     # one row per evaluated forecast (symbol, ts_ns, label, probabilities)


def evaluate_tape(tape: Tape, cfg: AgentsConfig, scorer: Scorer, opts: EvalOptions = EvalOptions()) -> Evaluation:
    split = split_by_time(build_examples(tape, cfg, "direction"), opts.test_fraction, cfg.horizon_s)
    test = list(split.test)
    if not test or not split.train:
        raise ValueError(f"too few labelled forecasts to split: {len(split.train)} train, {len(test)} test")
    held_out = len(test)
    if opts.max_forecasts and held_out > opts.max_forecasts:
        test = test[::-(-held_out // opts.max_forecasts)]
    policy, fit = opts.policy, None
    if opts.fit_weights:
        weights, fit = fitted_weights(scorer, split.train, opts)
        policy = replace(policy, weights=weights, override=True)
    llm, latency_ms = score_examples(scorer, test, opts.batch_size)
    routed = any(e.request.adapter for e in test)
    zero_shot = score_examples(scorer, test, opts.batch_size, adapter=False)[0] if routed else llm
    numeric = numeric_array(test)                                                           # [N, L]
    fused = fuse_by_policy(test, numeric, llm, policy)
    y = label_array(test)                                                                   # [N]
    probs = {"numeric": numeric, "llm_zero_shot": zero_shot, "llm": llm, "fused": fused,
             **baselines(split.train, test, cfg)}
    frame = forecast_frame(test, probs, latency_ms)
    frame = frame.with_columns(latency_adjusted_labels(tape, frame, cfg).alias("label_latency_adjusted"))
    report = build_report(frame, probs, y, opts) | {
        "split_ts_ns": split.split_ts_ns, "train_forecasts": len(split.train), "scorer": scorer.model_name,
        "held_out_forecasts": held_out, "with_news": int(sum(bool(e.request.news_ids) for e in test)),
        "fusion_weights": used_weights(test, policy) | {"fitted": fit},
        "horizon_s": cfg.horizon_s, "flat_bps": cfg.flat_bps,
        "latency_ms": {"p50": float(np.percentile(latency_ms, 50)), "p99": float(np.percentile(latency_ms, 99))}}
    return Evaluation(report, frame)


def numeric_array(examples: Sequence[Example]) -> np.ndarray:
    return np.asarray([e.request.numeric.as_tuple() for e in examples])


def example_clusters(examples: Sequence[Example], cluster_s: int = 300) -> np.ndarray:
    """One cluster per symbol and `cluster_s` block of event time: [N] labels."""
    return _clusters(pl.DataFrame({"symbol": [e.request.symbol for e in examples],
                                   "ts_ns": [e.ts_ns for e in examples]},
                                  schema={"symbol": pl.String, "ts_ns": pl.Int64}), cluster_s)


def fitted_weights(scorer: Scorer, train: Sequence[Example], opts: EvalOptions) -> tuple[FusionWeights, dict]:
    """Fusion weights fitted on (an evenly spaced subset of) the training part, and what the fit saw."""
    step = max(1, -(-len(train) // opts.fit_max))
    rows = list(train[::step])
    llm, _ = score_examples(scorer, rows, opts.batch_size)
    weights, loss = fit_weights(numeric_array(rows), llm, label_array(rows))
    return weights, {"forecasts": len(rows), "logloss": loss} | weights.to_json()


def fuse_by_policy(examples: Sequence[Example], numeric: np.ndarray, llm: np.ndarray,
                   policy: FusionPolicy) -> np.ndarray:
    """Fused probabilities [N, L], each row with the weights the worker would use for its request."""
    fused = np.empty_like(numeric)
    rows_of: dict[FusionWeights, list[int]] = {}
    for row, e in enumerate(examples):
        rows_of.setdefault(policy.weights_for(e.request.adapter, bool(e.request.news_ids)), []).append(row)
    for weights, rows in rows_of.items():
        fused[rows] = fuse_arrays(numeric[rows], llm[rows], weights)
    return fused


def used_weights(examples: Sequence[Example], policy: FusionPolicy) -> dict:
    """How many forecasts were fused with which (numeric, llm) weights."""
    counts: dict[str, int] = {}
    for e in examples:
        w = policy.weights_for(e.request.adapter, bool(e.request.news_ids))
        key = f"{w.numeric}/{w.llm}"
        counts[key] = counts.get(key, 0) + 1
    return {"numeric/llm": counts, "override": policy.override}


def score_examples(scorer: Scorer, examples: Sequence[Example], batch_size: int,
                   adapter: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """LLM label probabilities [N, L] and, per item, the wall time of the batch that scored it (ms) [N];
    `adapter` False: the base model's (every request scored without its adapter)."""
    probs, latency_ms = [], []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        items = [ScoreItem(e.request.id, e.request.prompt, e.request.adapter if adapter else None) for e in chunk]
        started = time.perf_counter()
        results = scorer.score(items)
        elapsed_ms = (time.perf_counter() - started) * 1e3
        probs += [r.probs if r.probs is not None else (1 / 3,) * 3 for r in results]
        latency_ms += [elapsed_ms] * len(chunk)
    return np.asarray(probs), np.asarray(latency_ms)


def baselines(train: Sequence[Example], test: Sequence[Example], cfg: AgentsConfig) -> dict[str, np.ndarray]:
    """Majority class and momentum sign (frequencies fitted on `train`), and the driftless random walk."""
    y_train = label_array(train)
    sign_train, sign_test = _momentum_sign(train), _momentum_sign(test)
    by_sign = {s: label_frequencies(y_train[sign_train == s]) for s in (-1, 0, 1)}
    walk = [numeric_probs(Features(**_features(e)), cfg.horizon_s, cfg.flat_bps, 0.0).as_tuple() for e in test]
    return {"majority": np.tile(label_frequencies(y_train), (len(test), 1)),
            "momentum_sign": np.asarray([by_sign[s] for s in sign_test]),
            "random_walk": np.asarray(walk)}


def _momentum_sign(examples: Sequence[Example]) -> np.ndarray:
    return np.sign([e.request.features["ret_short"] for e in examples]).astype(int)


def _features(example: Example) -> dict:
    """The request's features as `Features` keywords (the wire dict may carry extra keys)."""
    sent = example.request.features
    values = {f.name: sent.get(f.name) for f in fields(Features)}
    return values | {"trades_short": int(values["trades_short"])}


def forecast_frame(examples: Sequence[Example], probs: dict[str, np.ndarray], latency_ms: np.ndarray) -> pl.DataFrame:
    columns: dict = {"id": [e.request.id for e in examples], "symbol": [e.request.symbol for e in examples],
                     "ts_ns": [e.ts_ns for e in examples], "trigger": [e.request.trigger for e in examples],
                     "adapter": [e.request.adapter for e in examples], "label": [e.label for e in examples],
                     "latency_ms": latency_ms, "last_price": [e.request.features["last_price"] for e in examples]}
    for name, p in probs.items():
        for at, label in enumerate(DIRECTIONS):
            columns[f"{name}_p_{label}"] = p[:, at]
    return pl.DataFrame(columns)


def latency_adjusted_labels(tape: Tape, frame: pl.DataFrame, cfg: AgentsConfig) -> pl.Series:
    """The move over the horizon from the first trade after each forecast could have been published.

    Published = the first tick of the symbol after the trigger time (when the trigger became
    tick-complete) plus the scoring latency measured here; null where the tape ends too soon.
    """
    ticks = tape.ticks.select("symbol", pl.col("ts_ns").alias("tick_ns"))
    trades = tape.ticks.filter(pl.col("kind") == "trade").select("symbol", pl.col("ts_ns").alias("trade_ns"), "price")
    rows = frame.with_row_index("row").select("row", "symbol", (pl.col("ts_ns") + 1).alias("after_ns"),
                                               (pl.col("latency_ms") * 1e6).cast(pl.Int64).alias("latency_ns"))
    rows = _asof(rows, ticks, "after_ns", "tick_ns", "forward")
    rows = rows.with_columns((pl.col("tick_ns") + pl.col("latency_ns")).alias("published_ns"))
    start = _asof(rows, trades, "published_ns", "trade_ns", "forward").rename({"trade_ns": "start_ns", "price": "p0"})
    start = start.with_columns((pl.col("start_ns") + cfg.horizon_s * NS_PER_S).alias("end_ns"))
    both = _asof(start, trades, "end_ns", "trade_ns", "backward").rename({"price": "p1"}).sort("row")
    move = (pl.col("p1") / pl.col("p0")).log()
    flat = cfg.flat_bps / 1e4
    known = pl.col("p0").is_not_null() & (pl.col("end_ns") <= (tape.end_ns or 0))
    return both.select(pl.when(~known).then(None).when(move > flat).then(pl.lit("up"))
                       .when(move < -flat).then(pl.lit("down")).otherwise(pl.lit("flat"))).to_series()


def _asof(rows: pl.DataFrame, right: pl.DataFrame, on: str, right_on: str, strategy: str) -> pl.DataFrame:
    return rows.sort(on).join_asof(right.sort(right_on), left_on=on, right_on=right_on, by="symbol",
                                   strategy=strategy, check_sortedness=False)


def build_report(frame: pl.DataFrame, probs: dict[str, np.ndarray], y: np.ndarray, opts: EvalOptions) -> dict:
    resamples = cluster_resamples(_clusters(frame, opts.cluster_s), opts.n_boot, opts.seed)
    report: dict = {name: evaluate_forecast(probs[name], y, resamples) for name in FORECASTS}
    report["baselines"] = {name: evaluate_forecast(probs[name], y, resamples) for name in BASELINES}
    diff = paired_difference(probs["fused"], probs["numeric"], y, resamples)
    widest = max(report[n]["mcc_ci"][1] - report[n]["mcc_ci"][0] for n in ("fused", "numeric"))
    report["fused_vs_numeric_mcc"] = diff | {"widest_interval": widest,
                                             "beats_by_more_than_interval": diff["difference"] > widest}
    report["targets"] = targets(report)
    report["latency_adjusted_hit_rate"] = _latency_adjusted(frame, probs, opts)
    report["n"] = int(y.size)
    report["label_shares"] = {label: float((y == at).mean()) for at, label in enumerate(DIRECTIONS)}
    return report


def targets(report: dict) -> dict[str, bool]:
    """Issue #15's targets on these figures: fused beats numeric on MCC by more than the widest interval;
    fused log-loss at most the best component's; fused MCC not below the interval of the LLM alone; and,
    for a tape where the LLM may carry nothing, fused not worse than numeric beyond the interval (the
    paired interval of fused - numeric MCC reaches 0 or above, and log-loss within numeric's interval)."""
    fused, numeric, llm = report["fused"], report["numeric"], report["llm"]
    diff = report["fused_vs_numeric_mcc"]
    return {"fused_beats_numeric_mcc": bool(diff["beats_by_more_than_interval"]),
            "fused_logloss_at_most_best_component": fused["logloss"] <= min(numeric["logloss"], llm["logloss"]),
            "fused_mcc_not_below_llm_interval": fused["mcc"] >= llm["mcc_ci"][0],
            "fused_not_worse_than_numeric": bool(diff["ci"][1] >= 0 and fused["logloss"] <= numeric["logloss_ci"][1])}


def _clusters(frame: pl.DataFrame, cluster_s: int) -> np.ndarray:
    """One cluster per symbol and `cluster_s` block of event time."""
    block = (frame["ts_ns"] // (cluster_s * NS_PER_S)).cast(pl.String)
    return (frame["symbol"] + ":" + block).to_numpy()


def _latency_adjusted(frame: pl.DataFrame, probs: dict[str, np.ndarray], opts: EvalOptions) -> dict:
    labels = frame["label_latency_adjusted"].to_list()
    known = np.asarray([label is not None for label in labels])
    y = np.asarray([DIRECTIONS.index(label) for label in labels if label is not None])
    clusters = _clusters(frame, opts.cluster_s)[known]
    resamples = cluster_resamples(clusters, opts.n_boot, opts.seed) if y.size else []
    out = {}
    for name in FORECASTS:
        p = probs[name][known]
        hits = [accuracy(p[rows], y[rows]) for rows in resamples]
        out[name] = {"hit_rate": accuracy(p, y) if y.size else None, "hit_rate_ci": interval(hits) if hits else None}
    return out | {"n": int(y.size)}


# ------------------------------------------------------------------ plots


def write_plots(evaluation: Evaluation, tape: Tape, out_dir) -> list:
    """calibration.png (all symbols), and per symbol calibration_<SYM>.png and price_<SYM>.png."""
    import matplotlib
    matplotlib.use("Agg")
    from pathlib import Path

    out = Path(out_dir)
    frame = evaluation.frame
    paths = [_calibration_plot(frame, out / "calibration.png", "all symbols")]
    for symbol in frame["symbol"].unique().sort().to_list():
        rows = frame.filter(pl.col("symbol") == symbol)
        paths.append(_calibration_plot(rows, out / f"calibration_{symbol}.png", symbol))
        paths.append(_price_plot(rows, tape, symbol, out / f"price_{symbol}.png"))
    return paths


def reliability(frame: pl.DataFrame, name: str, bins: int = 10) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean forecast probability, observed frequency, count) per probability bin, over all labels."""
    p = np.concatenate([frame[f"{name}_p_{label}"].to_numpy() for label in DIRECTIONS])
    hit = np.concatenate([(frame["label"] == label).to_numpy() for label in DIRECTIONS]).astype(float)
    which = np.minimum((p * bins).astype(int), bins - 1)
    used = [b for b in range(bins) if (which == b).any()]
    return (np.asarray([p[which == b].mean() for b in used]), np.asarray([hit[which == b].mean() for b in used]),
            np.asarray([(which == b).sum() for b in used]))


def _calibration_plot(frame: pl.DataFrame, path, title: str):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect")
    for name in FORECASTS:
        mean_p, observed, _ = reliability(frame, name)
        ax.plot(mean_p, observed, marker="o", label=name)
    ax.set(xlabel="forecast probability", ylabel="observed frequency", xlim=(0, 1), ylim=(0, 1),
           title=f"Calibration, {title} ({frame.height} forecasts)")
    ax.legend(loc="upper left")
    fig.savefig(path, dpi=80, bbox_inches="tight")
    plt.close(fig)
    return path


def _price_plot(rows: pl.DataFrame, tape: Tape, symbol: str, path):
    import matplotlib.pyplot as plt

    first, last = rows["ts_ns"].min(), rows["ts_ns"].max()
    trades = tape.ticks.filter((pl.col("symbol") == symbol) & (pl.col("kind") == "trade")
                               & pl.col("ts_ns").is_between(first, last + 60 * NS_PER_S))
    fig, (price_ax, fc_ax) = plt.subplots(2, 1, figsize=(10, 5), sharex=True, height_ratios=(2, 1))
    price_ax.plot(_minutes(trades["ts_ns"], first), trades["price"], linewidth=0.7, color="black")
    price_ax.set(ylabel="price", title=f"{symbol}: price and forecasts")
    at = _minutes(rows["ts_ns"], first)
    for name in FORECASTS:
        fc_ax.plot(at, rows[f"{name}_p_up"] - rows[f"{name}_p_down"], marker=".", linewidth=0.5, label=name)
    realised = rows["label"].replace_strict({"up": 1.0, "down": -1.0, "flat": 0.0}, return_dtype=pl.Float64)
    fc_ax.scatter(at, realised * 0.9, marker="|", color="grey", label="realised (up/down)")
    fc_ax.set(xlabel="minutes", ylabel="p(up) - p(down)", ylim=(-1, 1))
    fc_ax.legend(loc="lower left", fontsize=7, ncol=4)
    fig.savefig(path, dpi=80, bbox_inches="tight")
    plt.close(fig)
    return path


def _minutes(ts_ns: pl.Series, origin_ns: int) -> np.ndarray:
    return (ts_ns.to_numpy() - origin_ns) / (60 * NS_PER_S)
