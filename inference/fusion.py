"""Fusing the numeric and the language-model forecasts, and the checks on their disagreement.

log p_fused(d) = w_numeric * log p_numeric(d) + w_llm * log p_llm(d) + const, renormalised;
with w_llm = 0 the forecast is the numeric one, and equal weights multiply the two opinions.
Fitting the weights on a tape: `finllm eval --tape T --fit-weights` scores the tape's first
part too and picks, on that part only, the (w_numeric, w_llm) of a grid that minimise the fused
forecast's log-loss (`fit_weights`), then evaluates the last part with them; put the printed
weights in FINLLM_FUSION_W_NUMERIC / FINLLM_FUSION_W_LLM. A live run's `forecasts.parquet` holds
both components and can be fitted the same way.

Trusting the language model only where it has shown it helps. A fixed global LLM weight trusts any
adapter on any market, even one where it only adds noise. So:

- Per adapter, fitted weights. `train_on_split` (agents/lab/training.py) scores each adapter's held-out
  part (data it did not train on) and stores `fit_discounted`'s weights in its card, field `fusion`:
  one pair for prompts with news, one for prompts without. `fit_discounted` picks the least-log-loss
  weights on the grid, but keeps an LLM weight above 0 only if it lowers the held-out log-loss by more
  than two cluster-robust standard errors against the best numeric-only fit (w_llm = 0): an adapter
  whose gain is within the noise is not trusted at all. A trusted fit's fused log-loss is at most
  either component's on the held-out part (both are points of the grid: numeric is (1, 0), the LLM
  alone (0, 1)); an untrusted one's at most numeric's.
- Prompts without news (`request.news_ids` empty) use the adapter's fitted no-news pair, and get LLM
  weight 0 where there is no fit (an adapter without a card's `fusion`, or too few held-out prompts
  without news to fit on: on the synthetic training tape every prompt has news, so the shipped cards'
  no-news pairs are this rule's). Why 0: on these markets the only information the language model
  can add to the numeric forecast is the news; without it the prompt holds only the market features
  the numeric forecast already uses, so the model's opinion is at best a copy and at worst noise,
  and an adapter fine-tuned on headlines is overconfident exactly there (bars without news, a market
  it never saw). A fitted pair replaces the rule once held-out prompts without news show otherwise.
- FINLLM_FUSION_W_NUMERIC / FINLLM_FUSION_W_LLM, when set, override all of this for every request.
  Adapters without a card's `fusion` use `FusionWeights()` for prompts with news.

Divergence: when the two disagree by more than `divergence_tv` in total variation, the forecast is
marked `divergent` and, if a deep adapter is configured, a second call scores the same prompt with it;
that deeper opinion is fused instead. Review: a language-model forecast whose direction contradicts a
large realised move since its latest news (`ret_since_news` of the request) is marked `review`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Iterable, Mapping

import numpy as np

from schemas import DIRECTIONS, Probs

FLOOR = 1e-6


@dataclass(frozen=True, slots=True)
class FusionWeights:
    """Defaults fitted with `finllm eval --fit-weights` on a synthetic tape the adapters were not trained
    on (bench/RESULTS.md, "Forecast quality"): the calibrated direction adapters carry the news, the
    numeric forecast (a Gaussian without jumps) is overdispersed, so it counts 0.3."""

    numeric: float = 0.3
    llm: float = 1.0

    def __post_init__(self) -> None:
        if self.numeric < 0 or self.llm < 0 or self.numeric + self.llm == 0:
            raise ValueError("fusion weights must be >= 0 and not both 0")

    @classmethod
    def from_env(cls) -> FusionWeights:
        default = cls()
        return cls(float(os.environ.get("FINLLM_FUSION_W_NUMERIC") or default.numeric),
                   float(os.environ.get("FINLLM_FUSION_W_LLM") or default.llm))


NUMERIC_ONLY = FusionWeights(1.0, 0.0)
MIN_FIT_ROWS = 50   # fewer held-out rows than this: the LLM is not trusted (`fit_discounted`)
ENV_WEIGHTS = ("FINLLM_FUSION_W_NUMERIC", "FINLLM_FUSION_W_LLM")


@dataclass(frozen=True, slots=True)
class AdapterFusion:
    """One adapter's fitted weights: for prompts with news, and for prompts without (a card's `fusion`)."""

    news: FusionWeights
    no_news: FusionWeights = NUMERIC_ONLY

    def weights(self, has_news: bool) -> FusionWeights:
        return self.news if has_news else self.no_news

    def to_json(self) -> dict:
        return {"news": _weights_json(self.news), "no_news": _weights_json(self.no_news)}

    @classmethod
    def from_json(cls, raw: Mapping) -> AdapterFusion:
        return cls(*(FusionWeights(float(raw[k]["numeric"]), float(raw[k]["llm"])) for k in ("news", "no_news")))


def _weights_json(weights: FusionWeights) -> dict:
    return {"numeric": weights.numeric, "llm": weights.llm}


def adapter_fusions(adapter_paths: Mapping[str, str | os.PathLike]) -> dict[str, AdapterFusion]:
    """The fitted `fusion` of each adapter folder's card.json that has one (name -> weights)."""
    from inference.adapters.cards import read_card

    fitted = {}
    for name, folder in adapter_paths.items():
        raw = read_card(folder).get("fusion")
        if raw:
            fitted[name] = AdapterFusion.from_json(raw)
    return fitted


@dataclass(frozen=True, slots=True)
class FusionPolicy:
    weights: FusionWeights = field(default_factory=FusionWeights)
    divergence_tv: float = 0.35        # total variation above which the two forecasts diverge
    deep_adapter: str | None = None    # scores divergent prompts a second time; None: no deep path
    review_move_bps: float = 30.0      # a move since the news this large makes a contrary LLM suspect
    adapters: Mapping[str, AdapterFusion] = field(default_factory=dict)  # fitted, from the adapters' cards
    override: bool = False             # `weights` for every request (FINLLM_FUSION_W_* set)

    @classmethod
    def from_env(cls, adapter_paths: Mapping[str, str | os.PathLike] | None = None) -> FusionPolicy:
        """Settings from the environment; the fitted weights from the cards of `adapter_paths` (name -> folder)."""
        env = os.environ
        return cls(FusionWeights.from_env(), float(env.get("FINLLM_DIVERGENCE_TV", 0.35)),
                   env.get("FINLLM_DEEP_ADAPTER") or None, float(env.get("FINLLM_REVIEW_MOVE_BPS", 30.0)),
                   adapter_fusions(adapter_paths or {}), any(env.get(k) for k in ENV_WEIGHTS))

    def weights_for(self, adapter: str | None, has_news: bool) -> FusionWeights:
        """The weights for a forecast of `adapter` (its request's) on a prompt with or without news."""
        if self.override:
            return self.weights
        fitted = self.adapters.get(adapter) if adapter else None
        if fitted is not None:
            return fitted.weights(has_news)
        return self.weights if has_news else NUMERIC_ONLY

    def diverges(self, numeric: Probs, llm: Probs | None) -> bool:
        return llm is not None and total_variation(numeric, llm) > self.divergence_tv

    def needs_review(self, llm: Probs | None, ret_since_news: float | None) -> bool:
        """The LLM calls against a large move that already followed its news."""
        if llm is None or ret_since_news is None or abs(ret_since_news) * 1e4 < self.review_move_bps:
            return False
        return llm.direction == ("down" if ret_since_news > 0 else "up")


def total_variation(a: Probs, b: Probs) -> float:
    return 0.5 * sum(abs(x - y) for x, y in zip(a.as_tuple(), b.as_tuple()))


def fuse(numeric: Probs, llm: Probs | None, weights: FusionWeights) -> Probs:
    if llm is None:
        return numeric
    return Probs.normalised(*fuse_arrays(np.asarray([numeric.as_tuple()]), np.asarray([llm.as_tuple()]),
                                         weights)[0].tolist())


def fuse_arrays(numeric: np.ndarray, llm: np.ndarray, weights: FusionWeights) -> np.ndarray:
    """`fuse` over [N, L] arrays of probabilities: the fused probabilities [N, L]."""
    logits = weights.numeric * np.log(np.maximum(numeric, FLOOR)) + weights.llm * np.log(np.maximum(llm, FLOOR))
    odds = np.exp(logits - logits.max(axis=1, keepdims=True))
    return odds / odds.sum(axis=1, keepdims=True)


def row_logloss(probs: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-row log-loss [N] of probabilities [N, L] at realised label indices [N]."""
    return -np.log(np.maximum(probs[np.arange(y.size), y], FLOOR))


def mean_logloss(probs: np.ndarray, y: np.ndarray) -> float:
    return float(row_logloss(probs, y).mean())


WEIGHT_GRID = tuple(round(0.1 * step, 1) for step in range(21))   # 0.0, 0.1, ..., 2.0


def fit_weights(numeric: np.ndarray, llm: np.ndarray, y: np.ndarray, grid: tuple[float, ...] = WEIGHT_GRID,
                llm_grid: tuple[float, ...] | None = None) -> tuple[FusionWeights, float]:
    """The weights on `grid` x `llm_grid` (default: `grid`) whose fused forecast has the least log-loss on
    (numeric [N, L], llm [N, L], realised label index [N]), and that log-loss; ties go to the smaller LLM weight."""
    if y.size == 0:
        raise ValueError("no rows to fit the fusion weights on")
    best: tuple[float, float, float] | None = None
    for w_llm in grid if llm_grid is None else llm_grid:
        for w_numeric in grid:
            if w_numeric + w_llm == 0:
                continue
            loss = mean_logloss(fuse_arrays(numeric, llm, FusionWeights(w_numeric, w_llm)), y)
            if best is None or loss < best[0] - 1e-12:
                best = (loss, w_numeric, w_llm)
    assert best is not None
    return FusionWeights(best[1], best[2]), best[0]


def fit_discounted(numeric: np.ndarray, llm: np.ndarray, y: np.ndarray, clusters: np.ndarray | None = None,
                   z: float = 2.0, min_rows: int = MIN_FIT_ROWS) -> tuple[FusionWeights, dict]:
    """`fit_weights`, unless the LLM's part is not clearly worth it: the best weights with w_llm = 0
    instead when the best fit's log-loss gain over them is at most `z` standard errors (clustered by
    `clusters` [N] when given: rows of one symbol and minute-block are not independent), or when there
    are fewer than `min_rows` rows. Returns the weights and what the decision saw."""
    if y.size < min_rows:
        return NUMERIC_ONLY, {"rows": int(y.size), "trusted": False, "reason": f"fewer than {min_rows} rows"}
    best, best_loss = fit_weights(numeric, llm, y)
    plain, plain_loss = fit_weights(numeric, llm, y, llm_grid=(0.0,))
    gain = row_logloss(fuse_arrays(numeric, llm, plain), y) - row_logloss(fuse_arrays(numeric, llm, best), y)
    se = _clustered_se(gain, np.arange(y.size) if clusters is None else clusters)
    trusted = best.llm > 0 and gain.mean() > z * se
    return (best if trusted else plain), {"rows": int(y.size), "trusted": bool(trusted),
                                          "gain": round(float(gain.mean()), 5), "gain_se": round(se, 5),
                                          "logloss": round(best_loss if trusted else plain_loss, 5),
                                          "best": _weights_json(best)}


def _clustered_se(values: np.ndarray, clusters: np.ndarray) -> float:
    """Standard error of the mean of `values` [N] with arbitrary correlation inside each cluster [N]."""
    _, which = np.unique(clusters, return_inverse=True)
    groups = int(which.max()) + 1
    if groups < 2:
        return float("inf")
    residual = np.bincount(which, weights=values - values.mean(), minlength=groups)
    return float(np.sqrt(groups / (groups - 1) * (residual ** 2).sum()) / values.size)


def fused_logloss(rows: Iterable[tuple[Probs, Probs | None, str]], weights: FusionWeights) -> float:
    """Mean log-loss of the fused forecast over (numeric, llm, realised direction) rows."""
    rows = list(rows)
    if not rows:
        return float("nan")
    fused = np.asarray([fuse(n, m, weights).as_tuple() for n, m, _ in rows])
    return mean_logloss(fused, np.asarray([DIRECTIONS.index(d) for _, _, d in rows]))
