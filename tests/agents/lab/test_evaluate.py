"""Evaluation: metrics, bootstrap intervals, latency-adjusted labels, the report and `finllm eval`."""
from __future__ import annotations

import json
import math
from typing import Sequence

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner

from agents.config import NS_PER_S, AgentsConfig
from agents.cli import cli
from agents.lab.evaluate import EvalOptions, evaluate_tape, latency_adjusted_labels
from agents.lab.quality import brier, cluster_resamples, ece, evaluate_forecast, logloss, mcc
from inference.scorers.base import ScoreItem, ScoreResult
from schemas import DIRECTIONS
from streams.synth import synth_tape
from streams.tape import Tape

CFG = AgentsConfig()


def onehot(y: Sequence[int], sharp: float = 1.0) -> np.ndarray:
    return np.eye(3)[list(y)] * sharp + (1 - sharp) / 3


def test_perfect_and_uninformed_forecasts():
    y = np.array([0, 1, 2, 0, 1, 2, 2])
    perfect = onehot(y)
    assert mcc(perfect, y) == pytest.approx(1.0) and brier(perfect, y) == pytest.approx(0.0)
    assert logloss(perfect, y) < 1e-9 and ece(perfect, y) == pytest.approx(0.0)
    uniform = np.full((7, 3), 1 / 3)
    assert mcc(uniform, y) == 0.0 and logloss(uniform, y) == pytest.approx(math.log(3))


def test_mcc_matches_the_binary_formula_on_two_classes():
    y = np.array([0, 0, 0, 1, 1, 1, 1, 0, 1, 0])
    pred = np.array([0, 0, 1, 1, 1, 0, 1, 0, 1, 1])
    tp, tn = ((pred == 0) & (y == 0)).sum(), ((pred == 1) & (y == 1)).sum()
    fp, fn = ((pred == 0) & (y == 1)).sum(), ((pred == 1) & (y == 0)).sum()
    binary = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert mcc(onehot(pred), y) == pytest.approx(binary)


def test_ece_sees_overconfidence():
    y = np.array([0, 1] * 50)
    honest, bold = np.tile([0.5, 0.5, 0.0], (100, 1)), np.tile([0.9, 0.1, 0.0], (100, 1))
    assert ece(honest, y) == pytest.approx(0.0) and ece(bold, y) == pytest.approx(0.4)


def test_cluster_bootstrap_keeps_clusters_whole_and_is_seeded():
    clusters = np.array(["a", "a", "b", "b", "b", "c"])
    draws = cluster_resamples(clusters, 20, seed=3)
    for rows in draws:
        counts = {c: (clusters[rows] == c).sum() for c in "abc"}
        assert counts["a"] % 2 == 0 and counts["b"] % 3 == 0
    assert all((a == b).all() for a, b in zip(draws, cluster_resamples(clusters, 20, seed=3)))
    y = np.array([0, 1, 2, 0, 1, 2])
    report = evaluate_forecast(onehot(y, 0.6), y, draws)
    assert report["mcc_ci"][0] <= report["mcc"] <= report["mcc_ci"][1] and report["n"] == 6


def test_latency_adjusted_labels_start_after_publication():
    """Trades at 0 s (100), 10 s (101), 20 s (99), 80 s (102), 200 s (100); a forecast at 5 s."""
    times_s, prices = [0, 10, 20, 80, 200], [100.0, 101.0, 99.0, 102.0, 100.0]
    ticks = pl.DataFrame({"symbol": ["X"] * 5, "ts_ns": [t * NS_PER_S for t in times_s], "kind": ["trade"] * 5,
                          "price": prices, "size": [1.0] * 5})
    tape = Tape.from_frames(ticks.with_columns(*(pl.lit(None, pl.Float64).alias(c) for c in
                                                 ("bid_px", "bid_sz", "ask_px", "ask_sz"))),
                            pl.DataFrame(schema={"id": pl.String, "ts_ns": pl.Int64, "source": pl.String,
                                                 "headline": pl.String, "body": pl.String,
                                                 "symbols": pl.List(pl.String)}))
    frame = pl.DataFrame({"symbol": ["X", "X"], "ts_ns": [5 * NS_PER_S, 5 * NS_PER_S], "latency_ms": [1.0, 12_000.0]})
    # at the trigger: 100 (0 s) -> 99 (last trade by 65 s): down
    # fast: tick-complete at 10 s, published 10.001 s -> first trade after is 99 @20 s; by 80 s 102: up
    # slow: published 10 s + 12 s = 22 s -> first trade after is 102 @80 s; by 140 s still 102: flat
    assert tape.realised_direction("X", 5 * NS_PER_S, CFG.horizon_s, CFG.flat_bps) == "down"
    assert latency_adjusted_labels(tape, frame, CFG).to_list() == ["up", "flat"]


class OracleScorer:
    """Scores each prompt with the realised label of its request (a stand-in for a very good model)."""

    model_name = "oracle"

    def __init__(self, labels: dict[str, str], sharpness: float) -> None:
        self.labels, self.sharpness = labels, sharpness

    def score(self, items: Sequence[ScoreItem]) -> list[ScoreResult]:
        return [ScoreResult(i.request_id, tuple(onehot([DIRECTIONS.index(self.labels[i.request_id])], self.sharpness)[0]))
                for i in items]

    def close(self) -> None:
        return None


@pytest.fixture(scope="module")
def tape() -> Tape:
    return synth_tape(symbols=3, minutes=20, seed=2)


def test_an_informative_llm_lifts_the_fused_forecast(tape):
    from agents.lab.examples import build_examples

    labels = {e.request.id: e.label for e in build_examples(tape, CFG)}
    evaluation = evaluate_tape(tape, CFG, OracleScorer(labels, 0.5), EvalOptions(n_boot=100))
    report = evaluation.report
    for name in ("numeric", "llm", "fused"):
        assert {"accuracy", "mcc", "mcc_ci", "brier", "logloss", "ece"} <= report[name].keys()
    assert report["llm"]["mcc"] == pytest.approx(1.0)
    assert report["fused_vs_numeric_mcc"]["difference"] > 0.3
    assert report["fused_vs_numeric_mcc"]["ci"][0] > 0
    assert report["baselines"]["majority"]["mcc"] == 0.0
    assert evaluation.frame.height == report["n"] > 10
    assert report["latency_adjusted_hit_rate"]["n"] > 0


def test_eval_cli_writes_the_report_and_plots(tape, tmp_path):
    pytest.importorskip("matplotlib")
    tape.write(tmp_path / "tape")
    out = tmp_path / "eval"
    result = CliRunner().invoke(cli, ["eval", "--tape", str(tmp_path / "tape"), "--out", str(out),
                                      "--no-adapters", "--bootstrap", "30"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "eval.json").read_text())
    for name in ("numeric", "llm", "fused"):
        low, high = report[name]["mcc_ci"]
        assert low <= report[name]["mcc"] <= high
        assert all(isinstance(report[name][k], float) for k in ("accuracy", "brier", "logloss", "ece"))
    pngs = {p.name for p in out.glob("*.png")}
    assert {"calibration.png", "price_ACME.png", "calibration_ACME.png"} <= pngs
    assert all((out / p).read_bytes()[:4] == b"\x89PNG" for p in pngs)


def test_fit_weights_uses_the_first_part_and_trusts_an_informative_llm(tape):
    from agents.lab.examples import build_examples

    labels = {e.request.id: e.label for e in build_examples(tape, CFG)}
    evaluation = evaluate_tape(tape, CFG, OracleScorer(labels, 0.5), EvalOptions(n_boot=50, fit_weights=True))
    weights = evaluation.report["fusion_weights"]
    assert weights["fitted"]["forecasts"] == evaluation.report["train_forecasts"]
    assert weights["fitted"]["llm"] > weights["fitted"]["numeric"]
    assert weights["override"]
    assert evaluation.report["fused"]["logloss"] < evaluation.report["numeric"]["logloss"]


class NoiseScorer(OracleScorer):
    """A confident language model that knows nothing: random sharp probabilities, one per request."""

    def score(self, items: Sequence[ScoreItem]) -> list[ScoreResult]:
        rng = np.random.default_rng(len(items))
        return [ScoreResult(i.request_id, tuple(float(p) for p in rng.dirichlet([0.3] * 3))) for i in items]


def test_a_tape_without_news_is_fused_as_numeric_whatever_the_llm_says():
    quiet = synth_tape(symbols=3, minutes=20, seed=2, news=False)
    evaluation = evaluate_tape(quiet, CFG, NoiseScorer({}, 0.0), EvalOptions(n_boot=50))
    report = evaluation.report
    assert report["with_news"] == 0 and report["n"] > 10
    frame = evaluation.frame
    for label in DIRECTIONS:
        assert frame[f"fused_p_{label}"].to_numpy() == pytest.approx(frame[f"numeric_p_{label}"].to_numpy())
    assert report["llm"]["logloss"] > report["numeric"]["logloss"]       # it is noise...
    assert report["targets"]["fused_not_worse_than_numeric"]              # ...and the fusion ignored it
    assert report["fusion_weights"]["numeric/llm"] == {"1.0/0.0": report["n"]}


def test_the_zero_shot_row_scores_the_same_prompts_without_the_adapter(tape):
    seen: list[str | None] = []

    class Recording(NoiseScorer):
        def score(self, items):
            seen.extend(i.adapter for i in items)
            return super().score(items)

    cfg = AgentsConfig(adapters={s: "fast" for s in tape.symbols})
    report = evaluate_tape(tape, cfg, Recording({}, 0.0), EvalOptions(n_boot=20, max_forecasts=10)).report
    assert report["n"] <= 10 < report["held_out_forecasts"]
    assert seen.count("fast") == seen.count(None) == report["n"]
    assert {"llm_zero_shot", "llm", "fused", "numeric"} <= report.keys() and len(report["targets"]) == 4
