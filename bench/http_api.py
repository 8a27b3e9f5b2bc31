"""The HTTP API under load: N concurrent streaming clients against `finllm serve`'s stack, in one process,
beside transformers' `generate` serving the same requests one at a time (the set-up of the write-up that
serves its LoRA model over FastAPI), and forecasts scored through the same engine with and without the
HTTP load (forecasts go first: their p99 should barely move).

Reports time to first token p50/p99 (request sent to first streamed text), inter-token latency p50 (per
request: decode time over tokens after the first), tokens/s (all clients' tokens over the wall time), the
same tokens/s for transformers, and forecast latency p99 alone and under the HTTP load. Both run float32
greedy with a fixed answer length (ignore_eos). Last line: one JSON object.

    python bench/http_api.py --quick            # about two minutes on 2 CPU cores (default model)
    python bench/http_api.py --quick --threads 1   # on a machine other jobs share
    python bench/http_api.py --clients 16 --requests 4 --max-tokens 64
"""
from __future__ import annotations

import sys
from pathlib import Path

# run as a script from anywhere; this file's folder leaves the path, or this file would be the standard
# library's `http` for everything imported after it
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse  # noqa: E402
import asyncio  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import time  # noqa: E402
from typing import Iterable  # noqa: E402

import httpx  # noqa: E402

from inference.api.protocol import ApiSettings  # noqa: E402
from inference.api.server import serving  # noqa: E402
from inference.checkpoints import resolve_model_dir  # noqa: E402
from inference.engine.config import EngineConfig  # noqa: E402
from inference.engine.cpu import describe_processor  # noqa: E402
from inference.scorers.base import ScoreItem  # noqa: E402
from inference.scorers.engine import EngineScorer  # noqa: E402

WORDS = ("shares rose after earnings beat estimates while guidance stayed cautious as oil fell and the Fed "
         "held rates steady; analysts upgraded the bank citing loan growth and lower credit losses").split()


def prompts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [f"{rng.choice(['AAPL', 'NVDA', 'XOM', 'JPM', 'PFE'])}: " + " ".join(rng.choices(WORDS, k=rng.randint(20, 60)))
            for _ in range(n)]


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)] if ordered else 0.0


async def one_stream(client: httpx.AsyncClient, model: str, prompt: str, max_tokens: int) -> dict:
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True,
            "stream": True, "stream_options": {"include_usage": True}}
    sent = time.perf_counter()
    first = last = None
    usage = {}
    async with client.stream("POST", "/v1/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[len("data: "):])
            if event["choices"] and event["choices"][0]["text"]:
                last = time.perf_counter()
                first = first or last
            usage = event.get("usage") or usage
    tokens = usage["completion_tokens"]
    return {"ttft_s": first - sent, "itl_s": (last - first) / max(tokens - 1, 1), "tokens": tokens,
            "timing": usage["timing"]}


async def http_load(url: str, model: str, texts: Iterable[str], clients: int, max_tokens: int,
                    results: list[dict] | None = None) -> tuple[list, float]:
    """`clients` concurrent streaming clients, each taking the next of `texts` until none is left (an
    endless iterator: until cancelled); each answered request's figures go into `results` as it ends."""
    queue = iter(texts)
    results = [] if results is None else results

    async def client_loop(client: httpx.AsyncClient) -> None:
        for text in queue:
            results.append(await one_stream(client, model, text, max_tokens))

    started = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=httpx.Limits(max_connections=clients)) as client:
        await asyncio.gather(*(client_loop(client) for _ in range(clients)))
    return results, time.perf_counter() - started


async def forecasts(shared, texts: list[str], interval_s: float, until: asyncio.Task | None = None) -> list[float]:
    """One forecast every `interval_s`, each scored on its own (as the worker scores a small batch); with
    `until`, only while that task runs."""
    latencies: list[float] = []

    async def one(text: str) -> None:
        started = time.perf_counter()
        (result,) = await asyncio.to_thread(shared.score, [ScoreItem("f", text, deadline_ns=time.time_ns() + 10**10)])
        assert result.probs is not None
        latencies.append(time.perf_counter() - started)

    tasks = []
    for text in texts:
        if until is not None and until.done():
            break
        tasks.append(asyncio.create_task(one(text)))
        await asyncio.sleep(interval_s)
    await asyncio.gather(*tasks)
    return latencies


def hf_generate(model_dir: str, texts: list[str], max_tokens: int) -> float:
    """transformers' generate, one request at a time: tokens/s."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True, dtype=torch.float32).eval()

    def generate(text: str) -> int:
        ids = torch.tensor([tokenizer.encode(text, add_special_tokens=False)])
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens,
                             min_new_tokens=max_tokens, do_sample=False, pad_token_id=tokenizer.eos_token_id)
        return out.shape[1] - ids.shape[1]

    with torch.inference_mode():
        generate(texts[0])                           # untimed: warms transformers up
        started = time.perf_counter()
        tokens = sum(generate(text) for text in texts)
    return tokens / (time.perf_counter() - started)


async def run(args) -> dict:
    model_dir = str(resolve_model_dir(args.model))
    scorer = EngineScorer(model_dir, config=EngineConfig(dtype="float32", cuda_graph_sizes=()),
                          device=args.device)
    texts = prompts(args.clients * args.requests)
    # each phase its own prompts: none finds another phase's prompt in the prefix cache
    warm_texts, alone_texts, loaded_texts = (prompts(args.forecasts, seed=s) for s in (1, 2, 3))
    async with serving(scorer, ApiSettings(port=0)) as (server, url, shared):
        model = server.base_names[0]
        await http_load(url, model, prompts(2, seed=4), 2, 4)             # warm-up
        await forecasts(shared, warm_texts[:4], args.forecast_interval_s)
        alone = await forecasts(shared, alone_texts, args.forecast_interval_s)
        load = asyncio.create_task(http_load(url, model, texts, args.clients, args.max_tokens))
        await asyncio.sleep(0.2)                                          # the batch fills with chats first
        loaded = await forecasts(shared, loaded_texts, args.forecast_interval_s, until=load)
        results, wall_s = await load
    hf_tps = hf_generate(model_dir, texts[:args.hf_requests], args.max_tokens)
    tps = sum(r["tokens"] for r in results) / wall_s
    timing = {k: round(quantile([r["timing"][k] for r in results], 0.5), 2) for k in results[0]["timing"]}
    return {"model": model, "clients": args.clients, "requests": len(results), "max_tokens": args.max_tokens,
            "ttft_p50_ms": round(quantile([r["ttft_s"] for r in results], 0.5) * 1e3, 1),
            "ttft_p99_ms": round(quantile([r["ttft_s"] for r in results], 0.99) * 1e3, 1),
            "itl_p50_ms": round(quantile([r["itl_s"] for r in results], 0.5) * 1e3, 2),
            "tokens_per_s": round(tps, 1), "hf_tokens_per_s": round(hf_tps, 1),
            "speedup_vs_hf": round(tps / hf_tps, 2), "timing_p50_ms": timing,
            "forecast_p99_ms_alone": round(quantile(alone, 0.99) * 1e3, 1),
            "forecast_p99_ms_under_http": round(quantile(loaded, 0.99) * 1e3, 1), "forecasts_under_http": len(loaded),
            "processor": describe_processor()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 clients, 2 requests each, 32 tokens")
    parser.add_argument("--model", help="a registered name or a folder (default: the default model)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="torch CPU threads (1 is fastest on a busy machine: "
                        "OpenMP's threads wait for each other when other jobs hold the cores)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=4, help="per client")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--hf-requests", type=int, default=8)
    parser.add_argument("--forecasts", type=int, default=40)
    parser.add_argument("--forecast-interval-s", type=float, default=0.05)
    args = parser.parse_args()
    if args.quick:
        args.clients, args.requests, args.max_tokens, args.hf_requests, args.forecasts = 8, 2, 32, 4, 20
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    result = asyncio.run(run(args))
    for key, value in result.items():
        if key != "timing_p50_ms":
            print(f"{key:<28} {value}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
