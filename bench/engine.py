"""Engine benchmark after the S-LoRA protocol: ours vs HF+PEFT (mixed batch) vs HF+PEFT (switching).

n adapters, power-law popularity, Poisson arrivals, prompts of 100-600 tokens, half `score`
and half `generate` (up to 32 tokens). Every system serves the same workload in real time;
we report requests/s, tokens/s, time to first token p50/p99 and deadline attainment.
Last line: one JSON object with the headline figures.

    python bench/engine.py --quick        # about a minute on 2 CPU cores
    python bench/engine.py                # alphas 0.1, 0.3, 1 and more requests

`--capacity` instead measures a real model against its peers, all requests queued at t=0
(bench/capacity.py says what each figure is):

    python bench/engine.py --capacity --model smollm2-135m --quick   # about 6 minutes on 2 CPU cores
"""
from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import sys

import torch
from tqdm import tqdm
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from inference.engine.config import EngineConfig
from inference.engine.engine import Engine
from inference.engine.sequence import RequestKind, RequestStatus
from tests.inference.tiny_models import build_tiny_adapter, build_tiny_model

LABEL_IDS = (11, 12, 13)


@dataclass(frozen=True, slots=True)
class BenchRequest:
    request_id: str
    arrival_s: float
    prompt: list[int]
    adapter: str | None
    max_new_tokens: int      # 0 for a score request
    deadline_s: float


@dataclass(slots=True)
class Served:
    first_token_s: float
    done_s: float
    num_tokens: int
    met_deadline: bool


def make_adapters(model_dir: str, root: Path, n: int, seed: int) -> dict[str, str]:
    """A few adapters made with peft (ranks 8 and 16); the rest re-randomise their tensors."""
    templates = [build_tiny_adapter(model_dir, root / f"t{r}", rank=r, seed=r) for r in (8, 16)]
    rng = torch.Generator().manual_seed(seed)
    paths = {}
    for i in range(n):
        template, out = Path(templates[i % 2]), root / f"adapter{i}"
        out.mkdir(parents=True, exist_ok=True)
        (out / "adapter_config.json").write_text((template / "adapter_config.json").read_text())
        tensors = load_file(str(template / "adapter_model.safetensors"))
        save_file({k: torch.randn(v.shape, generator=rng) * 0.05 for k, v in tensors.items()},
                  str(out / "adapter_model.safetensors"))
        paths[f"adapter{i}"] = str(out)
    return paths


def make_workload(n_requests: int, n_adapters: int, alpha: float, rate_per_s: float,
                  vocab: int, slo_s: float, seed: int) -> list[BenchRequest]:
    rng = random.Random(seed)
    weights = [(i + 1) ** -alpha for i in range(n_adapters)]
    arrival, requests = 0.0, []
    for i in range(n_requests):
        arrival += rng.expovariate(rate_per_s)
        adapter = f"adapter{rng.choices(range(n_adapters), weights)[0]}"
        prompt = [rng.randrange(100, vocab) for _ in range(rng.randint(100, 600))]
        max_new = rng.randint(8, 32) if i % 2 else 0
        requests.append(BenchRequest(str(i), arrival, prompt, adapter, max_new, arrival + slo_s))
    return requests


def run_ours(engine: Engine, workload: list[BenchRequest]) -> dict[str, Served]:
    served: dict[str, Served] = {}
    by_id = {r.request_id: r for r in workload}
    pending, start = list(workload), time.perf_counter()
    first: dict[str, float] = {}
    while pending or engine.has_unfinished():
        now = time.perf_counter() - start
        while pending and pending[0].arrival_s <= now:
            _submit(engine, pending.pop(0))
        if not engine.has_unfinished():
            time.sleep(max(pending[0].arrival_s - now, 0))
            continue
        outputs = engine.step()
        now = time.perf_counter() - start
        for request in engine.scheduler.running:
            if request.output_token_ids:
                first.setdefault(request.request_id, now)
        for out in outputs:
            r = by_id[out.request_id]
            ok = out.status is RequestStatus.FINISHED
            served[r.request_id] = Served(first.get(r.request_id, now) - r.arrival_s, now,
                                          len(out.output_token_ids) if ok else 0, ok and now <= r.deadline_s)
    return served


def _submit(engine: Engine, r: BenchRequest) -> None:
    if r.max_new_tokens:
        engine.add_request(r.request_id, r.prompt, RequestKind.GENERATE, adapter=r.adapter,
                           max_new_tokens=r.max_new_tokens)
    else:
        engine.add_request(r.request_id, r.prompt, RequestKind.SCORE, adapter=r.adapter, label_token_ids=LABEL_IDS)


class PeftBaseline:
    """HF + PEFT serving arrived requests in padded batches; `mixed` uses adapter_names=."""

    def __init__(self, model_dir: str, adapters: dict[str, str], mixed: bool, max_batch: int) -> None:
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        names = list(adapters)
        self.model = PeftModel.from_pretrained(base, adapters[names[0]], adapter_name=names[0]).eval()
        for name in names[1:]:
            self.model.load_adapter(adapters[name], adapter_name=name)
        self.mixed, self.max_batch = mixed, max_batch

    def serve(self, workload: list[BenchRequest]) -> dict[str, Served]:
        served: dict[str, Served] = {}
        pending, start = list(workload), time.perf_counter()
        while pending:
            now = time.perf_counter() - start
            if pending[0].arrival_s > now:
                time.sleep(pending[0].arrival_s - now)
                continue
            batch = [r for r in pending if r.arrival_s <= now][:self.max_batch]
            pending = [r for r in pending if r not in batch]
            groups = [batch] if self.mixed else _by_adapter(batch)
            for group in groups:
                self._run_group(group, start, served)
        return served

    def _run_group(self, group: list[BenchRequest], start: float, served: dict[str, Served]) -> None:
        scores = [r for r in group if not r.max_new_tokens]
        gens = [r for r in group if r.max_new_tokens]
        if scores:
            self._forward(scores)
            self._mark(scores, start, served, 0)
        if gens:
            first = self._generate(gens) - start
            self._mark(gens, start, served, first)

    @torch.inference_mode()
    def _forward(self, batch: list[BenchRequest]) -> None:
        ids, mask = _left_pad([r.prompt for r in batch])
        logits = self.model(input_ids=ids, attention_mask=mask, logits_to_keep=1, **self._adapter_kw(batch)).logits
        logits[:, -1, list(LABEL_IDS)].softmax(-1)

    @torch.inference_mode()
    def _generate(self, batch: list[BenchRequest]) -> float:
        ids, mask = _left_pad([r.prompt for r in batch])
        first_token_at = time.perf_counter()   # approximate: prefill ends inside generate
        self.model.generate(input_ids=ids, attention_mask=mask, do_sample=False, pad_token_id=0,
                            max_new_tokens=max(r.max_new_tokens for r in batch), **self._adapter_kw(batch))
        return first_token_at + (time.perf_counter() - first_token_at) / max(r.max_new_tokens for r in batch)

    def _adapter_kw(self, batch: list[BenchRequest]) -> dict:
        if self.mixed:
            return {"adapter_names": [r.adapter for r in batch]}
        self.model.set_adapter(batch[0].adapter)
        return {}

    @staticmethod
    def _mark(batch: list[BenchRequest], start: float, served: dict[str, Served], first_s: float) -> None:
        now = time.perf_counter() - start
        for r in batch:
            first = first_s if r.max_new_tokens else now
            served[r.request_id] = Served(first - r.arrival_s, now, r.max_new_tokens, now <= r.deadline_s)


def _by_adapter(batch: list[BenchRequest]) -> list[list[BenchRequest]]:
    groups: dict[str | None, list[BenchRequest]] = {}
    for r in batch:
        groups.setdefault(r.adapter, []).append(r)
    return list(groups.values())


def _left_pad(prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])                 # [B, S]
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])     # [B, S]
    return ids, mask


def summarize(served: dict[str, Served], workload: list[BenchRequest]) -> dict:
    makespan = max(s.done_s for s in served.values()) - min(r.arrival_s for r in workload)
    ttfts = sorted(s.first_token_s for s in served.values())
    tokens = sum(len(r.prompt) + served[r.request_id].num_tokens for r in workload)
    return {"rps": len(served) / makespan, "tokens_per_s": tokens / makespan,
            "ttft_p50_s": ttfts[len(ttfts) // 2], "ttft_p99_s": ttfts[min(int(0.99 * len(ttfts)), len(ttfts) - 1)],
            "deadline_attainment": sum(s.met_deadline for s in served.values()) / len(workload)}


def bench_one(model_dir: str, adapter_paths: dict[str, str], n: int, alpha: float, args) -> dict:
    workload = make_workload(args.requests, n, alpha, args.rate, args.vocab, args.slo_s, seed=n)
    used = {r.adapter for r in workload}
    paths = {name: adapter_paths[name] for name in sorted(used)}
    config = EngineConfig(block_size=16, num_blocks=2048, max_num_batched_tokens=args.token_budget,
                          max_num_seqs=args.max_batch, max_adapter_slots=args.slots, max_lora_rank=16)
    engine = Engine(model_dir, config)
    for name, path in paths.items():
        engine.register_adapter(name, path)
    _warm_up(engine)
    row = {"adapters": n, "alpha": alpha, "ours": summarize(run_ours(engine, workload), workload)}
    for label, mixed in (("peft_mixed", True), ("peft_switch", False)):
        baseline = PeftBaseline(model_dir, paths, mixed=mixed, max_batch=args.max_batch)
        baseline.serve(workload[:3])  # warm-up
        row[label] = summarize(baseline.serve(workload), workload)
    return row


def _warm_up(engine: Engine) -> None:
    for i, length in enumerate((600, 350, 100)):
        engine.add_request(f"warm{i}", list(range(100, 100 + length)), RequestKind.GENERATE, max_new_tokens=4)
    engine.run_until_done()


def print_row(row: dict) -> None:
    for system in ("ours", "peft_mixed", "peft_switch"):
        m = row[system]
        print(f"n={row['adapters']:<4} alpha={row['alpha']:<4} {system:<12} req/s={m['rps']:7.2f} "
              f"tok/s={m['tokens_per_s']:9.0f} ttft p50={m['ttft_p50_s']:6.3f}s p99={m['ttft_p99_s']:6.3f}s "
              f"deadline={m['deadline_attainment']:.2f}")
    print(f"   ours/peft_mixed={row['ours']['rps'] / row['peft_mixed']['rps']:.2f}x "
          f"ours/peft_switch={row['ours']['rps'] / row['peft_switch']['rps']:.2f}x", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--requests", type=int, default=None)
    parser.add_argument("--rate", type=float, default=40.0, help="Poisson arrivals per second")
    parser.add_argument("--slo-s", type=float, default=30.0)
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--token-budget", type=int, default=2048)
    parser.add_argument("--slots", type=int, default=16)
    parser.add_argument("--vocab", type=int, default=2048)
    capacity_args = parser.add_argument_group("--capacity: a real model against transformers, PEFT and llama.cpp")
    capacity_args.add_argument("--capacity", action="store_true")
    capacity_args.add_argument("--model", default=None, help="a registered model name or folder (default: the product's)")
    capacity_args.add_argument("--dtype", default=None, help="default: the processor's fast dtype")
    capacity_args.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    capacity_args.add_argument("--prompt-len", type=int, default=350)
    capacity_args.add_argument("--decode-tokens", type=int, default=32)
    capacity_args.add_argument("--hf-batch", type=int, default=8)
    capacity_args.add_argument("--adapters", type=int, default=100)
    capacity_args.add_argument("--repeats", type=int, default=None)
    capacity_args.add_argument("--label-prompts", type=int, default=None)
    capacity_args.add_argument("--threads", type=int, default=None, help="torch threads (default: every core)")
    args = parser.parse_args()
    if args.capacity:
        return main_capacity(args)
    args.requests = args.requests or (48 if args.quick else 96)
    alphas = (1.0,) if args.quick else (0.1, 0.3, 1.0)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model_dir = build_tiny_model(root / "model", hidden_size=256, num_layers=2, num_heads=4, num_kv_heads=2,
                                     intermediate_size=512, vocab_size=args.vocab)
        adapter_paths = make_adapters(model_dir, root / "adapters", 100, seed=0)
        rows = []
        cases = [(n, alpha) for n in (1, 10, 100) for alpha in alphas]
        for n, alpha in tqdm(cases, desc="workloads", unit="case", disable=not sys.stderr.isatty()):
            rows.append(bench_one(model_dir, adapter_paths, n, alpha, args))
            print_row(rows[-1])
    headline = [r for r in rows if r["alpha"] == 1.0]
    print(json.dumps({
        "adapters": [r["adapters"] for r in headline],
        "ours_rps": [round(r["ours"]["rps"], 3) for r in headline],
        "peft_mixed_rps": [round(r["peft_mixed"]["rps"], 3) for r in headline],
        "peft_switch_rps": [round(r["peft_switch"]["rps"], 3) for r in headline],
        "speedup_vs_peft_mixed": [round(r["ours"]["rps"] / r["peft_mixed"]["rps"], 3) for r in headline],
        "speedup_vs_peft_switch": [round(r["ours"]["rps"] / r["peft_switch"]["rps"], 3) for r in headline],
    }))


def main_capacity(args) -> None:
    from capacity import capacity                        # bench/ is this script's folder

    from inference.checkpoints import resolve_model_dir

    if args.threads:
        torch.set_num_threads(args.threads)
    args.requests = args.requests or (12 if args.quick else 24)
    args.repeats = args.repeats or (1 if args.quick else 2)
    args.label_prompts = args.label_prompts or (12 if args.quick else 48)
    out = capacity(str(resolve_model_dir(args.model)), args)
    for key, value in out.items():
        print(f"{key:<34} {round(value, 3) if isinstance(value, float) else value}")
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in out.items()}))


if __name__ == "__main__":
    main()
