"""Picking the next token from a step's logits, per request: greedy, or sampled with temperature and top-p.

Pure torch on the CPU (one row per decoding request, a few per step), so the same logits and seed give
the same token on every device. Reproducible without state: the draw for a request's n-th output token
uses a generator seeded from (seed, n), so a preempted and recomputed request, or a replay, draws the
same tokens. A batch whose requests are all greedy and want no log-probabilities takes the plain
argmax on the device, as before sampling existed.
"""
from __future__ import annotations

from typing import Sequence

import torch

from inference.engine.sequence import Request, SamplingParams, TokenLogprobs

_GOLDEN = 0x9E3779B97F4A7C15     # spreads consecutive seeds and token positions over the generator's seeds


def sample_next_tokens(logits: torch.Tensor, requests: Sequence[Request]) -> list[tuple[int, TokenLogprobs | None]]:
    """`logits` [N, V] of the rows whose next token is due, row i for requests[i]: (token, logprobs) each."""
    if all(r.sampling.greedy and r.sampling.logprobs is None for r in requests):
        return [(token, None) for token in logits.argmax(dim=-1).cpu().tolist()]
    rows = logits.float().cpu()
    picks = []
    for row, request in zip(rows, requests):
        token = pick_token(row, request.sampling, len(request.output_token_ids))
        picks.append((token, token_logprobs(row, token, request.sampling.logprobs)))
    return picks


def pick_token(logits: torch.Tensor, params: SamplingParams, position: int) -> int:
    """One token from one row of logits [V]; `position`: how many tokens the request has produced."""
    if params.greedy:
        return int(logits.argmax())
    probs = torch.softmax(logits.double() / params.temperature, dim=-1)
    generator = torch.Generator().manual_seed(_stream_seed(params.seed or 0, position))
    if params.top_p == 1:
        return int(torch.multinomial(probs, 1, generator=generator))
    order = torch.argsort(probs, descending=True, stable=True)
    sorted_probs = probs[order]
    before = torch.cumsum(sorted_probs, dim=0) - sorted_probs          # mass of the more likely tokens
    nucleus = torch.where(before < params.top_p, sorted_probs, torch.zeros_like(sorted_probs))
    return int(order[torch.multinomial(nucleus, 1, generator=generator)])


def token_logprobs(logits: torch.Tensor, token: int, top: int | None) -> TokenLogprobs | None:
    """The model's log-probability of `token` and of its `top` most likely tokens (None: not asked)."""
    if top is None:
        return None
    logprobs = torch.log_softmax(logits.double(), dim=-1)
    best = torch.topk(logprobs, min(top, logprobs.numel())) if top else None
    alternatives = () if best is None else tuple(zip(best.indices.tolist(), best.values.tolist()))
    return float(logprobs[token]), alternatives


def _stream_seed(seed: int, position: int) -> int:
    return (seed * _GOLDEN + position * 0x2545F4914F6CDD1D + 1) % (2 ** 63)
