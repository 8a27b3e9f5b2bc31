"""Base-only, deep-for-all and tiered answering of one tape's triggers, on the same hardware in one run.

Every request a replay of a synthetic tape makes is answered three ways by the paged engine in this
process: base-only (the tier policy's skips, the base tier's short prompt for the rest, on the base tier's
engine: the model's distilled student with its shipped adapters by default, FINLLM_BASE_MODEL; int8
weights by default where the CPU lacks native bf16, FINLLM_BASE_QUANT), deep-for-all (the deep prompt for
every trigger, on the deep tier's engine: the model itself at full precision by default, FINLLM_DEEP_QUANT)
and tiered (the base tier, then the deep prompt for the forecasts the policy escalates), each tier with its
model's shipped adapters, routes and fitted fusion weights as the workers serve them (`--no-adapters`: the
model alone in both tiers). Quality: MCC and
log-loss of the fused forecasts against the realised directions, with 95% cluster-bootstrap intervals.
Throughput: triggers answered per second of engine time, all queued at once.

Overload: requests arrive one by one, Poisson at twice deep-for-all's measured throughput, for
`--overload-s` seconds (the tape's requests in turn), each due `--deadline-ms` after its arrival (the
product's FINLLM_DEADLINE_MS); the engines serve them as they arrive (continuous batching), the base
tier's engine before the deep tier's (the deep tier's worker runs niced; its revisions come after a
forecast is already published). Expired: the share of arrivals whose forecast missed its deadline (it
is then numeric-only); a tiered deep revision that is late leaves the base answer standing, and is
counted apart. Latency: arrival to answer, p99, of the answered ones. Last line: one JSON object.

    python bench/tiers.py --quick [--model tiny] [--overload-s S] [--deadline-ms MS] [--threads 1]
"""
from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agents.config import AgentsConfig  # noqa: E402
from agents.lab.evaluate import example_clusters  # noqa: E402
from agents.lab.examples import build_examples, label_array  # noqa: E402
from agents.lab.quality import cluster_resamples, evaluate_forecast  # noqa: E402
from inference.engine.cpu import describe_processor  # noqa: E402
from inference.fusion import FusionPolicy, fuse  # noqa: E402
from inference.scorers.base import ScoreItem  # noqa: E402
from inference.tiering import TIER_QUANT, TierPolicy  # noqa: E402
from schemas import Probs  # noqa: E402
from schemas.units import NS_PER_MS, NS_PER_S  # noqa: E402
from streams.synth import write_synth_tape  # noqa: E402
from streams.tape import Tape  # noqa: E402

CONFIGS = ("base", "deep_all", "tiered")


@dataclass(frozen=True, slots=True)
class Tiers:
    """The two tiers' scorers (one and the same when their settings agree), the policy between them, and
    each tier's fusion (the fitted weights of the adapters it serves)."""

    base: object
    deep: object
    policy: TierPolicy
    fusion: FusionPolicy           # the base tier's
    deep_fusion: FusionPolicy

    @property
    def engines(self) -> list:
        """Base first: on shared hardware the deep tier takes what the base tier leaves."""
        return [self.base] if self.base is self.deep else [self.base, self.deep]


def prompt_of(request, tier: str) -> str:
    return request.prompt_deep or request.prompt if tier == "deep" else request.prompt


def score(scorer, requests, tier: str, deadline_ns=None) -> tuple[dict, float]:
    """{id: probs or None (expired)}, seconds; every request queued at once."""
    items = [ScoreItem(r.id, prompt_of(r, tier), r.adapter, deadline_ns, value=r.value or 0.0) for r in requests]
    started = time.perf_counter()
    results = scorer.score(items)
    return {res.request_id: res.probs for res in results}, time.perf_counter() - started


def fused(requests, llm: dict, fusions: dict) -> np.ndarray:
    """The fused forecasts [N, 3]; `llm`: {id: (probs or None, tier)}, each fused with its tier's weights."""
    out = []
    for r in requests:
        probs, tier = llm.get(r.id, (None, "base"))
        opinion = None if probs is None else Probs.normalised(*probs)
        out.append(fuse(r.numeric, opinion, fusions[tier].weights_for(r.adapter, bool(r.news_ids))).as_tuple())
    return np.asarray(out)


def answered_by(answers: dict, tier: str) -> dict:
    return {i: (p, tier) for i, p in answers.items()}


def escalates(tiers: Tiers, request, probs) -> bool:
    """Whether the base tier's worker sends this answer to the deep tier (divergent, low confidence, review)."""
    if probs is None:
        return False
    llm = Probs.normalised(*probs)
    review = tiers.fusion.needs_review(llm, request.features.get("ret_since_news"))
    return bool(tiers.policy.escalation_reasons(request.numeric, llm, review, request.value or 0.0))


def run_tiered(tiers: Tiers, asked) -> tuple[dict, float, int]:
    """The base tier, then the deep prompt for the escalated ones: {id: (probs, tier)}, seconds, escalated count."""
    base, base_s = score(tiers.base, asked, "base")
    escalate = [r for r in asked if escalates(tiers, r, base.get(r.id))]
    deep, deep_s = score(tiers.deep, escalate, "deep")
    answers = answered_by(base, "base") | answered_by({i: p for i, p in deep.items() if p is not None}, "deep")
    return answers, base_s + deep_s, len(escalate)


def poisson_arrivals(rate_per_s: float, duration_s: float, seed: int) -> list[float]:
    """Arrival times in seconds from 0, exponential gaps of mean 1 / rate, up to `duration_s`."""
    rng = np.random.default_rng(seed)
    times = np.cumsum(rng.exponential(1.0 / rate_per_s, size=int(rate_per_s * duration_s * 1.5) + 16))
    return times[times < duration_s].tolist()


@dataclass(slots=True)
class Tally:
    """What happened to the arrivals of one overload run."""

    arrivals: int = 0
    answered: int = 0        # in time: by the model, or skipped by the policy at once
    expired: int = 0
    escalated: int = 0
    revised: int = 0         # deep revisions answered in time
    refused: int = 0         # the engine could not take it (an unknown adapter, a prompt over the KV pool)
    latencies_ms: list[float] = field(default_factory=list)

    def figures(self) -> dict:
        return {"expired_share": self.expired / max(self.arrivals, 1),
                "p99_ms": float(np.percentile(self.latencies_ms, 99)) if self.latencies_ms else None,
                "arrivals": self.arrivals, "escalated": self.escalated, "revised": self.revised,
                "refused": self.refused}


class OverloadRun:
    """One configuration served as its requests arrive: each arrival is routed (policy), submitted to its
    tier's engine with its deadline, and the engines step while anything is in them."""

    def __init__(self, tiers: Tiers, config: str, deadline_ns: int) -> None:
        self.tiers, self.config, self.deadline_ns = tiers, config, deadline_ns
        self.in_flight: dict[tuple, tuple] = {}   # (scorer's id(), engine id) -> (item, request, tier, arrival_ns)
        self.tally = Tally()
        self.start_ns = 0

    def run(self, stream: list[tuple[float, object]]) -> Tally:
        self.start_ns = time.time_ns()
        pending = iter(stream)
        upcoming = next(pending, None)
        while upcoming is not None or self.in_flight:
            now_s = (time.time_ns() - self.start_ns) / NS_PER_S
            while upcoming is not None and upcoming[0] <= now_s:
                self.arrive(*upcoming)
                upcoming = next(pending, None)
            busy = next((s for s in self.tiers.engines if s.engine.has_unfinished()), None)
            if busy is not None:
                self.finish(busy, busy.engine.step())
            elif upcoming is not None:
                time.sleep(max(upcoming[0] - now_s, 0.0))
        return self.tally

    def arrive(self, at_s: float, request) -> None:
        arrival_ns = self.start_ns + int(at_s * NS_PER_S)
        self.tally.arrivals += 1
        if self.config != "deep_all" and self.tiers.policy.route(request.numeric, request.new_news) == "skip":
            self.tally.answered += 1
            self.tally.latencies_ms.append((time.time_ns() - arrival_ns) / NS_PER_MS)
            return
        tier = "deep" if self.config == "deep_all" else "base"
        self.submit(tier, request, arrival_ns, arrival_ns + self.deadline_ns)

    def submit(self, tier: str, request, arrival_ns: int, deadline_ns: int) -> None:
        scorer = self.tiers.deep if tier == "deep" else self.tiers.base
        revision = tier == "deep" and self.config == "tiered"      # a revision: after the forecasts
        item = ScoreItem(request.id, prompt_of(request, tier), request.adapter, deadline_ns,
                         background=revision, value=request.value or 0.0)
        rid = scorer.submit(item)
        if rid is None:
            self.tally.refused += 1
        else:
            self.in_flight[id(scorer), rid] = (item, request, tier, arrival_ns)

    def finish(self, scorer, outputs) -> None:
        for output in outputs:
            item, request, tier, arrival_ns = self.in_flight.pop((id(scorer), output.request_id))
            probs = scorer.result(item, output).probs
            if tier == "deep" and self.config == "tiered":
                self.tally.revised += probs is not None
                continue
            if probs is None:
                self.tally.expired += 1
                continue
            self.tally.answered += 1
            self.tally.latencies_ms.append((time.time_ns() - arrival_ns) / NS_PER_MS)
            if self.config == "tiered" and escalates(self.tiers, request, probs):
                self.tally.escalated += 1
                now_ns = time.time_ns()
                self.submit("deep", request, now_ns, now_ns + self.tiers.policy.deep_deadline_ms * NS_PER_MS)


def overload(tiers: Tiers, requests, rate_per_s: float, duration_s: float, deadline_ms: int) -> dict:
    """Each configuration's figures under the same Poisson arrivals."""
    times = poisson_arrivals(rate_per_s, duration_s, seed=3)
    stream = list(zip(times, itertools.cycle(requests)))
    return {name: OverloadRun(tiers, name, deadline_ms * NS_PER_MS).run(stream).figures() for name in CONFIGS}


def build_tiers(model: str | None, routing, policy: TierPolicy) -> Tiers:
    """Each tier's engine as its workers serve it: the deep tier the model with `routing`'s adapters (its
    shipped set; None: none); the base tier the model and adapters `base_tier_env` picks (FINLLM_BASE_MODEL:
    by default the model's distilled student with its shipped adapters), each with its quantisation
    (FINLLM_BASE_QUANT, default auto: int8 without native bf16; FINLLM_DEEP_QUANT, default none) and its
    adapters' fitted fusion weights. No prefix cache: each configuration scores the same prompts again (and
    the overload cycles them), so a cache would hand the later ones the earlier ones' work."""
    from inference.adapters.shipped import BASE_MODEL_ENV, base_tier_env, load_routing
    from inference.checkpoints import resolve_model_dir
    from inference.scorers.factory import build_scorer
    from streams.settings import ROUTING_FILE_ENV

    quant = {tier: os.environ.get(setting, default) or "none" for tier, (setting, default) in TIER_QUANT.items()}
    adapters = adapter_paths(routing)
    chosen = {BASE_MODEL_ENV: os.environ[BASE_MODEL_ENV]} if os.environ.get(BASE_MODEL_ENV) else {}
    env = base_tier_env({"FINLLM_MODEL": model or "", **(routing.env() if routing else {}), **chosen})
    base_model = env["FINLLM_MODEL"] or None
    base_adapters = (adapter_paths(load_routing(env[ROUTING_FILE_ENV]))
                     if base_model != model and env.get(ROUTING_FILE_ENV) else adapters)
    deep = build_scorer("paged", resolve_model_dir(model), adapters=adapters, quant=quant["deep"], prefix_caching=False)
    same = base_model == model and quant["base"] == quant["deep"]
    base = deep if same else build_scorer("paged", resolve_model_dir(base_model), adapters=base_adapters,
                                          quant=quant["base"], prefix_caching=False)
    return Tiers(base, deep, policy, FusionPolicy.from_env(base_adapters), FusionPolicy.from_env(adapters))


def adapter_paths(routing) -> dict[str, str]:
    """A routing's adapters, name -> folder (none without a routing)."""
    return {name: str(path) for name, path in routing.adapters.items()} if routing else {}


def served(model: str | None, with_adapters: bool):
    """The agents' settings and the model's shipped routing (adapters, routes), as the demo serves them;
    without adapters, the base model alone (routing None)."""
    from inference.adapters.shipped import shipped_routing

    cfg = AgentsConfig.from_env()
    routing = shipped_routing(model) if with_adapters else None
    if routing is None:
        return cfg, None
    return replace(cfg, adapters=dict(routing.routes), default_adapter=routing.default), routing


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small tape (2 symbols x 20 minutes)")
    parser.add_argument("--model", default=os.environ.get("FINLLM_MODEL") or None)
    parser.add_argument("--out", type=Path, default=Path("bench-out/tiers"))
    parser.add_argument("--deadline-ms", type=int, default=None, help="default: FINLLM_DEADLINE_MS (10000)")
    parser.add_argument("--overload-s", type=float, default=None, help="arrivals for this long (default: "
                        "3 deadlines with --quick, else 6)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's; 1 on a machine other "
                        "jobs share, where OpenMP's threads wait for each other)")
    parser.add_argument("--no-adapters", action="store_true", help="the base model alone (default: its shipped "
                        "adapters and routes, with their fitted fusion weights)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    cfg, routing = served(args.model, not args.no_adapters)
    adapters = adapter_paths(routing)
    deadline_ms = args.deadline_ms or cfg.deadline_ms
    overload_s = args.overload_s or deadline_ms / 1e3 * (3 if args.quick else 6)
    symbols, minutes = (2, 20) if args.quick else (8, 120)
    write_synth_tape(args.out / "tape", symbols, minutes, seed=7)
    examples = build_examples(Tape.read(args.out / "tape"), cfg)
    y = label_array(examples)
    resamples = cluster_resamples(example_clusters(examples), 200 if args.quick else 1000, seed=0)
    tiers = build_tiers(args.model, routing, TierPolicy.from_env())
    fusions = {"base": tiers.fusion, "deep": tiers.deep_fusion}
    requests, skipped = tiers.policy.plan([e.request for e in examples])
    asked = [r for r in requests if r.id not in skipped]
    print(f"processor: {describe_processor()}; {len(requests)} triggers; deep model {tiers.deep.model_name}; base "
          f"model {tiers.base.model_name}", flush=True)

    for scorer, tier in ((tiers.base, "base"), (tiers.deep, "deep")):
        score(scorer, requests, tier)      # warm-up, not measured: a first pass over new shapes runs several times slower
    base, base_s = score(tiers.base, asked, "base")
    deep_all, deep_s = score(tiers.deep, requests, "deep")
    tiered, tiered_s, escalated = run_tiered(tiers, asked)
    answers = {"base": answered_by(base, "base"), "deep_all": answered_by(deep_all, "deep"), "tiered": tiered}
    quality = {name: evaluate_forecast(fused(requests, llm, fusions), y, resamples) for name, llm in answers.items()}
    rps = {"base": len(requests) / base_s, "deep_all": len(requests) / deep_s, "tiered": len(requests) / tiered_s}
    print(f"quality: " + "; ".join(f"{k} MCC {v['mcc']:.3f} {[round(x, 3) for x in v['mcc_ci']]} log-loss "
                                    f"{v['logloss']:.3f}" for k, v in quality.items()) + f"; escalated {escalated}")
    print(f"throughput (triggers/s): {rps}; overload: {2 * rps['deep_all']:.1f} arrivals/s for {overload_s:.0f} s, "
          f"deadline {deadline_ms} ms", flush=True)
    loaded = overload(tiers, requests, 2 * rps["deep_all"], overload_s, deadline_ms)
    for scorer in {id(s): s for s in tiers.engines}.values():
        scorer.close()
    result = {"triggers": len(requests), "processor": describe_processor(), "model": args.model or "default",
              "adapters": sorted(adapters), "base_model": tiers.base.model_name,
              "deep_model": tiers.deep.model_name, "base_quant": tiers.base.engine.model.quant,
              "deep_quant": tiers.deep.engine.model.quant,
              "deep_share": escalated / len(requests), "skipped_share": len(skipped) / len(requests),
              **{f"mcc_{k}": round(v["mcc"], 4) for k, v in quality.items()},
              **{f"mcc_{k}_ci": [round(x, 4) for x in v["mcc_ci"]] for k, v in quality.items()},
              **{f"logloss_{k}": round(v["logloss"], 4) for k, v in quality.items()},
              **{f"rps_{k}": round(v, 2) for k, v in rps.items()},
              "tiered_speedup_vs_deep_all": round(rps["tiered"] / rps["deep_all"], 2),
              "overload_rate_per_s": round(2 * rps["deep_all"], 2), "overload_s": overload_s,
              "deadline_ms": deadline_ms,
              **{f"expired_share_overload_{k}": round(v["expired_share"], 4) for k, v in loaded.items()},
              **{f"p99_ms_overload_{k}": v["p99_ms"] and round(v["p99_ms"], 1) for k, v in loaded.items()},
              "arrivals_overload": loaded["deep_all"]["arrivals"],
              "refused_overload": sum(v["refused"] for v in loaded.values()),
              "deep_revisions_overload_tiered": [loaded["tiered"]["revised"], loaded["tiered"]["escalated"]]}
    print(orjson.dumps(result).decode())


if __name__ == "__main__":
    main()
