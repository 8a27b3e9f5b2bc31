"""Fusing the numeric and the language-model forecasts, and the checks on their disagreement.

log p_fused(d) = w_numeric * log p_numeric(d) + w_llm * log p_llm(d) + b_d + const, renormalised;
with w_llm = 0 and no bias the forecast is the numeric one, and equal weights multiply the two opinions.
The per-label biases b_d correct a component's label prior. Fitting: `fit_weights` finds the
(w_numeric, w_llm >= 0, b) of least log-loss on labelled rows (a stack: a conditional logit over the
two components' log-probabilities). `finllm eval --tape T --fit-weights` fits them on the tape's first
part and evaluates the last part with them; a live run's `forecasts.parquet` holds both components
and can be fitted the same way.

Trusting the language model only where it has shown it helps. A fixed global LLM weight trusts any
adapter on any market, even one where it only adds noise. So:

- Per adapter, fitted weights. `train_on_split` (agents/lab/training.py) scores each adapter's held-out
  part (data it did not train on) and stores `fit_discounted`'s weights in its card, field `fusion`:
  one set for prompts with news, one for prompts without; `finllm adapters refit-fusion` refits the
  cards of trained adapters. `fit_discounted` fits both components, but keeps an LLM weight above 0
  only if that lowers the held-out log-loss by more than two cluster-robust standard errors against the
  best fit without the LLM (w_llm = 0, the numeric forecast and the biases): an adapter whose gain is
  within the noise is not trusted at all. Why a stack with biases and not the weights alone: on the
  shipped direction adapter's held-out part the numeric forecast has no directional skill (MCC 0.03)
  but a better label prior than the adapter (which says "flat" for 55% of prompts where 25% are), and
  weights alone could borrow that prior only through the numeric's log-probabilities, which moved the
  LLM's argmax (MCC 0.122 -> 0.104 at the fitted 0.3 / 0.4); with biases the fit takes the prior from b
  and weights the numeric 0.06 (MCC 0.127, log-loss 1.066 against 1.075).
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
    bias: tuple[float, ...] = (0.0,) * len(DIRECTIONS)   # log-odds added to each label, DIRECTIONS' order

    def __post_init__(self) -> None:
        if self.numeric < 0 or self.llm < 0:
            raise ValueError("fusion weights must be >= 0")
        if len(self.bias) != len(DIRECTIONS):
            raise ValueError(f"one fusion bias per label {DIRECTIONS}, got {self.bias}")

    def to_json(self) -> dict:
        return {"numeric": round(self.numeric, 6), "llm": round(self.llm, 6), "bias": [round(b, 6) for b in self.bias]}

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
        return {"news": self.news.to_json(), "no_news": self.no_news.to_json()}

    @classmethod
    def from_json(cls, raw: Mapping) -> AdapterFusion:
        return cls(*(FusionWeights(float(raw[k]["numeric"]), float(raw[k]["llm"]),
                                   tuple(float(b) for b in raw[k].get("bias", (0.0,) * len(DIRECTIONS))))
                     for k in ("news", "no_news")))


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
    logits = (weights.numeric * np.log(np.maximum(numeric, FLOOR)) + weights.llm * np.log(np.maximum(llm, FLOOR))
              + np.asarray(weights.bias))
    odds = np.exp(logits - logits.max(axis=1, keepdims=True))
    return odds / odds.sum(axis=1, keepdims=True)


def row_logloss(probs: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-row log-loss [N] of probabilities [N, L] at realised label indices [N]."""
    return -np.log(np.maximum(probs[np.arange(y.size), y], FLOOR))


def mean_logloss(probs: np.ndarray, y: np.ndarray) -> float:
    return float(row_logloss(probs, y).mean())


def fit_weights(numeric: np.ndarray, llm: np.ndarray, y: np.ndarray, use_llm: bool = True, biases: bool = True,
                l2: float = 1e-4) -> tuple[FusionWeights, float]:
    """The weights (w_numeric, w_llm >= 0, a bias per label) whose fused forecast has the least log-loss on
    (numeric [N, L], llm [N, L], realised label index [N]), and that log-loss; `use_llm` False: w_llm = 0;
    `biases` False: no biases (a numeric forecast alone then only changes its temperature, never its argmax).

    A stack: log p(d) = w_numeric log p_numeric(d) + w_llm log p_llm(d) + b_d, a conditional logit whose
    log-likelihood is concave in (w, b), so Newton's method finds its one optimum (a small `l2` keeps it
    defined when a component is constant). The biases let the fit fix a component's label prior (an
    adapter that says "flat" twice as often as it happens) without borrowing it from the other
    component's log-probabilities, which would move the LLM's argmax with a numeric forecast that
    carries no direction. A weight fitted below 0 is fixed at 0 and the rest refitted."""
    if y.size == 0:
        raise ValueError("no rows to fit the fusion weights on")
    logs = [np.log(np.maximum(numeric, FLOOR)), np.log(np.maximum(llm, FLOOR))]
    labels = numeric.shape[1]
    prior = [np.broadcast_to(np.eye(labels)[k], numeric.shape) for k in range(labels - 1 if biases else 0)]
    free = [0, 1] if use_llm else [0]
    while True:
        if not free and not prior:                       # nothing left to fit: the uniform forecast
            return FusionWeights(0.0, 0.0), float(np.log(labels))
        features = np.stack([logs[w] for w in free] + prior, axis=-1)                       # [N, L, P]
        theta, loss = _conditional_logit(features, y, l2)
        negative = [w for w, value in zip(free, theta) if value < 0]
        if not negative:
            break
        free.remove(negative[0])
    weights = dict(zip(free, theta[:len(free)].tolist()))
    bias = tuple(theta[len(free):].tolist()) + (0.0,) * (labels - len(prior))   # the last label's b is 0
    return FusionWeights(weights.get(0, 0.0), weights.get(1, 0.0), bias), loss


def _conditional_logit(features: np.ndarray, y: np.ndarray, l2: float) -> tuple[np.ndarray, float]:
    """The theta [P] minimising mean(-log softmax(features @ theta)[y]) + l2 |theta|^2 / 2 (Newton, halving
    steps), and that mean log-loss without the penalty; features [N, L, P], y [N]."""
    rows = np.arange(y.size)

    def loss_of(theta: np.ndarray) -> tuple[float, np.ndarray]:
        logits = features @ theta                                                       # [N, L]
        logits = logits - logits.max(axis=1, keepdims=True)
        log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        return float(-log_p[rows, y].mean()), np.exp(log_p)

    theta = np.zeros(features.shape[-1])
    loss, p = loss_of(theta)
    for _ in range(100):
        mean_f = np.einsum("nl,nlp->np", p, features)                                   # [N, P]
        grad = (mean_f - features[rows, y]).mean(axis=0) + l2 * theta
        hess = (np.einsum("nl,nlp,nlq->pq", p, features, features) - mean_f.T @ mean_f) / y.size
        step = np.linalg.solve(hess + l2 * np.eye(theta.size), grad)
        objective = loss + 0.5 * l2 * theta @ theta
        for _ in range(30):
            candidate = theta - step
            new_loss, new_p = loss_of(candidate)
            if new_loss + 0.5 * l2 * candidate @ candidate <= objective:
                break
            step = step / 2
        else:
            break
        theta, loss, p = candidate, new_loss, new_p
        if np.abs(step).max() < 1e-9:
            break
    return theta, loss


def fit_discounted(numeric: np.ndarray, llm: np.ndarray, y: np.ndarray, clusters: np.ndarray | None = None,
                   z: float = 2.0, min_rows: int = MIN_FIT_ROWS) -> tuple[FusionWeights, dict]:
    """`fit_weights`, unless the LLM's part is not clearly worth it: the numeric forecast alone, only tempered
    (w_llm = 0 and no biases, so its argmax and MCC stay), when the best fit's log-loss gain over the best
    fit without the LLM (numeric and biases) is at most `z` standard errors (clustered by `clusters` [N]
    when given: rows of one symbol and minute-block are not independent), or when there are fewer than
    `min_rows` rows. Returns the weights and what the decision saw."""
    if y.size < min_rows:
        return NUMERIC_ONLY, {"rows": int(y.size), "trusted": False, "reason": f"fewer than {min_rows} rows"}
    best, best_loss = fit_weights(numeric, llm, y)
    plain, _ = fit_weights(numeric, llm, y, use_llm=False)
    gain = row_logloss(fuse_arrays(numeric, llm, plain), y) - row_logloss(fuse_arrays(numeric, llm, best), y)
    se = _clustered_se(gain, np.arange(y.size) if clusters is None else clusters)
    trusted = best.llm > 0 and gain.mean() > z * se
    if not trusted:     # the numeric forecast, only tempered: its ranking (and MCC) stays whole
        best, best_loss = fit_weights(numeric, llm, y, use_llm=False, biases=False)
    return best, {"rows": int(y.size), "trusted": bool(trusted), "gain": round(float(gain.mean()), 5),
                  "gain_se": round(se, 5), "logloss": round(best_loss, 5), "best": best.to_json()}


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
