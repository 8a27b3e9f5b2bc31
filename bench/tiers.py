"""Base-only, deep-for-all and tiered answering of one tape's triggers, on the same engine in one run.

Every request a replay of a synthetic tape makes is answered three ways by the paged engine in this
process: base-only (the tier policy's skips, the short prompt for the rest), deep-for-all (the deep
prompt for every trigger) and tiered (the base tier, then the deep prompt for the forecasts the
policy escalates). Quality: MCC and log-loss of the fused forecasts against the realised directions,
with 95% cluster-bootstrap intervals. Throughput: triggers answered per second of engine time, all
queued at once. Overload: every request queued at once with a deadline that leaves time for half of
what deep-for-all answers in that time (twice its capacity); the share answered as expired.
The base tier's int8 weights come with FINLLM_ENGINE_QUANT where the engine has it (not applied here
unless set). Last line: one JSON object.

    python bench/tiers.py --quick [--model tiny]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
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
from inference.tiering import TierPolicy  # noqa: E402
from schemas import Probs  # noqa: E402
from streams.synth import write_synth_tape  # noqa: E402
from streams.tape import Tape  # noqa: E402


def score(scorer, requests, prompts, deadline_ns=None) -> tuple[dict, float]:
    """{id: probs or None (expired)}, seconds; every request queued at once."""
    items = [ScoreItem(r.id, p, r.adapter, deadline_ns, value=r.value or 0.0) for r, p in zip(requests, prompts)]
    started = time.perf_counter()
    results = scorer.score(items)
    return {res.request_id: res.probs for res in results}, time.perf_counter() - started


def fused(requests, llm: dict, fusion: FusionPolicy) -> np.ndarray:
    out = []
    for r in requests:
        probs = llm.get(r.id)
        opinion = None if probs is None else Probs.normalised(*probs)
        out.append(fuse(r.numeric, opinion, fusion.weights_for(r.adapter, bool(r.news_ids))).as_tuple())
    return np.asarray(out)


def run_tiered(scorer, requests, policy: TierPolicy, deadline_ns=None) -> tuple[dict, float, int]:
    """The base tier, then the deep prompt for the escalated ones: {id: probs}, seconds, escalated count."""
    score(scorer, requests[:8], [r.prompt_deep or r.prompt for r in requests[:8]])   # warm-up, not measured
    planned, skipped = policy.plan(requests)
    asked = [r for r in planned if r.id not in skipped]
    base, base_s = score(scorer, asked, [r.prompt for r in asked], deadline_ns)
    escalate = [r for r in asked if base.get(r.id) is not None and policy.escalation_reasons(
        r.numeric, Probs.normalised(*base[r.id]), False, r.value or 0.0)]
    deep, deep_s = score(scorer, escalate, [r.prompt_deep or r.prompt for r in escalate], deadline_ns)
    return base | {i: p for i, p in deep.items() if p is not None}, base_s + deep_s, len(escalate)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small tape (2 symbols x 20 minutes)")
    parser.add_argument("--model", default=os.environ.get("FINLLM_MODEL") or None)
    parser.add_argument("--out", type=Path, default=Path("bench-out/tiers"))
    args = parser.parse_args()
    from inference.checkpoints import resolve_model_dir
    from inference.scorers.factory import build_scorer

    symbols, minutes = (2, 20) if args.quick else (8, 120)
    write_synth_tape(args.out / "tape", symbols, minutes, seed=7)
    examples = build_examples(Tape.read(args.out / "tape"), AgentsConfig())
    requests, y = [e.request for e in examples], label_array(examples)
    resamples = cluster_resamples(example_clusters(examples), 200 if args.quick else 1000, seed=0)
    scorer = build_scorer("paged", resolve_model_dir(args.model))
    policy, fusion = TierPolicy(), FusionPolicy()
    print(f"processor: {describe_processor()}; {len(requests)} triggers; model {scorer.model_name}", flush=True)

    score(scorer, requests[:8], [r.prompt_deep or r.prompt for r in requests[:8]])   # warm-up, not measured
    planned, skipped = policy.plan(requests)
    asked = [r for r in planned if r.id not in skipped]
    base, base_s = score(scorer, asked, [r.prompt for r in asked])
    deep_all, deep_s = score(scorer, requests, [r.prompt_deep or r.prompt for r in requests])
    tiered, tiered_s, escalated = run_tiered(scorer, requests, policy)
    quality = {name: evaluate_forecast(fused(requests, llm, fusion), y, resamples)
               for name, llm in (("base", base), ("deep_all", deep_all), ("tiered", tiered))}
    rps = {"base": len(requests) / base_s, "deep_all": len(requests) / deep_s, "tiered": len(requests) / tiered_s}

    window_ns = int(len(requests) / (2 * rps["deep_all"]) * 1e9)     # twice what deep-for-all can serve
    expired = {}
    for name in ("base", "deep_all", "tiered"):
        deadline_ns = time.time_ns() + window_ns
        if name == "tiered":
            llm, _, _ = run_tiered(scorer, requests, policy, deadline_ns)
        else:
            chosen = asked if name == "base" else requests
            prompts = [r.prompt if name == "base" else r.prompt_deep or r.prompt for r in chosen]
            llm, _ = score(scorer, chosen, prompts, deadline_ns)
        answered = {i for i, p in llm.items() if p is not None} | (skipped if name != "deep_all" else set())
        expired[name] = 1.0 - len(answered) / len(requests)
    scorer.close()
    result = {"triggers": len(requests), "processor": describe_processor(), "model": args.model or "default",
              "deep_share": escalated / len(requests), "skipped_share": len(skipped) / len(requests),
              **{f"mcc_{k}": round(v["mcc"], 4) for k, v in quality.items()},
              **{f"mcc_{k}_ci": [round(x, 4) for x in v["mcc_ci"]] for k, v in quality.items()},
              **{f"logloss_{k}": round(v["logloss"], 4) for k, v in quality.items()},
              **{f"rps_{k}": round(v, 2) for k, v in rps.items()},
              "tiered_speedup_vs_deep_all": round(rps["tiered"] / rps["deep_all"], 2),
              **{f"expired_share_overload_{k}": round(v, 4) for k, v in expired.items()}}
    print(orjson.dumps(result).decode())


if __name__ == "__main__":
    main()
