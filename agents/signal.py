"""The numeric forecaster: direction probabilities from features under a Gaussian move model.

The move over the horizon is modelled as N(mu, sigma^2) with sigma = realised vol * sqrt(horizon)
and mu = momentum_coef * short-window return; up/down/flat are the mass beyond +/- the flat band.
"""
from __future__ import annotations

import math

from agents.features import Features
from schemas import Probs

MIN_PROB = 1e-4


def _norm_cdf(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def numeric_probs(features: Features, horizon_s: int, flat_bps: float, momentum_coef: float) -> Probs:
    sigma = features.vol_per_sqrt_s * math.sqrt(horizon_s)
    mu = momentum_coef * features.ret_short
    band = flat_bps / 1e4
    p_up = 1.0 - _norm_cdf((band - mu) / sigma)
    p_down = _norm_cdf((-band - mu) / sigma)
    p_flat = 1.0 - p_up - p_down
    return Probs.normalised(*(max(p, MIN_PROB) for p in (p_up, p_down, p_flat)))
