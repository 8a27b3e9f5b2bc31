"""Forecast-quality metrics over the three direction labels, and cluster-bootstrap intervals.

`probs` is [N, L] (rows sum to 1, columns in `schemas.DIRECTIONS` order), `y` is [N] label indices.
Pure numpy: no torch, no Kafka.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from schemas import DIRECTIONS

EPS = 1e-12
ECE_BINS = 10
METRICS = ("accuracy", "mcc", "brier", "logloss", "ece")


def label_frequencies(y: np.ndarray, labels: int = len(DIRECTIONS)) -> np.ndarray:
    """Each label's share of `y` with one added to every count (no zero probability): [L]."""
    counts = np.bincount(y, minlength=labels).astype(float) + 1.0
    return counts / counts.sum()


def accuracy(probs: np.ndarray, y: np.ndarray) -> float:
    return float((probs.argmax(1) == y).mean())


def mcc(probs: np.ndarray, y: np.ndarray) -> float:
    """Matthews correlation of the argmax forecast, multi-class (Gorodkin's R_K); 0 when undefined."""
    k = probs.shape[1]
    confusion = np.bincount(y * k + probs.argmax(1), minlength=k * k).reshape(k, k)  # [true, pred]
    n = confusion.sum()
    correct = np.trace(confusion)
    true_counts, pred_counts = confusion.sum(1), confusion.sum(0)
    cov = correct * n - true_counts @ pred_counts
    denom = np.sqrt(float(n * n - pred_counts @ pred_counts) * float(n * n - true_counts @ true_counts))
    return float(cov / denom) if denom > 0 else 0.0


def brier(probs: np.ndarray, y: np.ndarray) -> float:
    """Multi-class Brier score: mean over forecasts of sum_l (p_l - [y = l])^2 (0 best, 2 worst)."""
    onehot = np.eye(probs.shape[1])[y]
    return float(((probs - onehot) ** 2).sum(1).mean())


def logloss(probs: np.ndarray, y: np.ndarray) -> float:
    return float(-np.log(np.clip(probs[np.arange(y.size), y], EPS, 1.0)).mean())


def ece(probs: np.ndarray, y: np.ndarray, bins: int = ECE_BINS) -> float:
    """Top-label expected calibration error over equal-width confidence bins."""
    confidence = probs.max(1)
    hit = probs.argmax(1) == y
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    total = 0.0
    for b in np.unique(which):
        in_bin = which == b
        total += in_bin.sum() * abs(hit[in_bin].mean() - confidence[in_bin].mean())
    return float(total / y.size)


METRIC_FNS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "accuracy": accuracy, "mcc": mcc, "brier": brier, "logloss": logloss, "ece": ece}


def point_metrics(probs: np.ndarray, y: np.ndarray) -> dict[str, float]:
    return {name: fn(probs, y) for name, fn in METRIC_FNS.items()}


def cluster_resamples(clusters: np.ndarray, n_boot: int, seed: int) -> list[np.ndarray]:
    """`n_boot` row-index arrays, each drawing whole clusters with replacement.

    Forecasts in one cluster (a symbol's block of time) share price moves; resampling them
    together keeps their dependence, so intervals are not too narrow.
    """
    rng = np.random.default_rng(seed)
    ids, inverse = np.unique(clusters, return_inverse=True)
    members = [np.flatnonzero(inverse == i) for i in range(ids.size)]
    draws = rng.integers(0, ids.size, (n_boot, ids.size))
    return [np.concatenate([members[c] for c in draw]) for draw in draws]


def interval(values: list[float], level: float = 0.95) -> tuple[float, float]:
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(np.asarray(values), [tail, 100 - tail])
    return float(low), float(high)


def bootstrap_metrics(probs: np.ndarray, y: np.ndarray, resamples: list[np.ndarray]) -> dict[str, tuple]:
    """95% percentile interval of every metric over the given resamples."""
    draws = {name: [fn(probs[rows], y[rows]) for rows in resamples] for name, fn in METRIC_FNS.items()}
    return {name: interval(values) for name, values in draws.items()}


def paired_difference(a: np.ndarray, b: np.ndarray, y: np.ndarray, resamples: list[np.ndarray],
                      metric: str = "mcc") -> dict[str, float | tuple]:
    """metric(a) - metric(b), with its 95% interval over the same resamples (paired)."""
    fn = METRIC_FNS[metric]
    diffs = [fn(a[rows], y[rows]) - fn(b[rows], y[rows]) for rows in resamples]
    return {"difference": fn(a, y) - fn(b, y), "ci": interval(diffs)}


def evaluate_forecast(probs: np.ndarray, y: np.ndarray, resamples: list[np.ndarray]) -> dict:
    """Point metrics plus `<metric>_ci` (low, high) for each, as eval.json reports them."""
    out: dict = point_metrics(probs, y)
    for name, ci in bootstrap_metrics(probs, y, resamples).items():
        out[f"{name}_ci"] = ci
    out["n"] = int(y.size)
    return out
