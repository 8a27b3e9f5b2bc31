"""GPU benchmark of the multi-LoRA engine on a Qwen2-0.5B-shaped model (random bf16 weights).

Measures, on one CUDA device: `score` requests/s with 100 adapters (ranks 8-64, power-law
popularity) through `inference.engine`, the same with one adapter merged into the base and no
LoRA, and HF + PEFT mixed-adapter batches; decode step time at batch 1 (with and without CUDA
graphs) and tokens/s at batch 64; where a step's time goes (scheduling, host preparation, GPU
kernels); and the Triton kernels against their torch references at these shapes. Writes
bench/results/gpu-engine.json.

    python bench/gpu_engine.py            # needs CUDA (an H100 takes a few minutes); exit 2 without
    python bench/gpu_engine.py --smoke    # tiny shapes on any device to check the script; writes nothing
    python bench/gpu_engine.py --host     # the engine's host work per step at the real workload's shape
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from bench.kernel_timings import kernel_timings  # noqa: E402
from inference.engine.config import EngineConfig  # noqa: E402
from inference.engine.engine import Engine  # noqa: E402
from inference.engine.model import load_state_dict  # noqa: E402
from inference.engine.sequence import RequestKind  # noqa: E402

RESULTS_PATH = Path(__file__).parent / "results" / "gpu-engine.json"
LABEL_IDS = (11, 12, 13)
MODULE_PARENT = {"q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn", "o_proj": "self_attn",
                 "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp"}


@dataclass(frozen=True, slots=True)
class Settings:
    hidden: int = 896
    layers: int = 24
    heads: int = 14
    kv_heads: int = 2
    intermediate: int = 4864
    vocab: int = 151936
    prompt_len: int = 350
    num_adapters: int = 100
    ranks: tuple[int, ...] = (8, 16, 32, 64)
    popularity_alpha: float = 1.0
    score_requests: int = 512
    peft_requests: int = 128
    peft_batch: int = 32
    decode_batch: int = 64
    decode_tokens: int = 64
    targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    max_num_seqs: int = 64
    max_adapter_slots: int = 32
    token_budget: int = 8192
    num_blocks: int = 8192


SMOKE = Settings(hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128, vocab=512, prompt_len=40,
                 num_adapters=6, score_requests=12, peft_requests=6, peft_batch=3, decode_batch=4,
                 decode_tokens=4, max_num_seqs=8, max_adapter_slots=4, token_budget=256, num_blocks=256)


# The full workload's requests, adapters and token budget over a 1-layer, 32-wide model: what the engine's
# Python does per step (schedule, inputs, segments, outputs, bookkeeping) at the shape the GPU sees.
HOST = replace(Settings(), hidden=32, layers=1, heads=2, kv_heads=1, intermediate=32, vocab=1024)


# -- checkpoints ---------------------------------------------------------------------------------
def build_model(s: Settings, out_dir: Path, device: str) -> str:
    from transformers import AutoModelForCausalLM, Qwen2Config

    config = Qwen2Config(vocab_size=s.vocab, hidden_size=s.hidden, intermediate_size=s.intermediate,
                         num_hidden_layers=s.layers, num_attention_heads=s.heads, num_key_value_heads=s.kv_heads,
                         tie_word_embeddings=True, max_position_embeddings=4096, rope_theta=1e6)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(out_dir)
    return str(out_dir)


def write_adapter(s: Settings, out_dir: Path, rank: int, seed: int) -> str:
    """A PEFT LoRA folder written directly: lora_A [r, in], lora_B [r, out] per layer and target."""
    gen = torch.Generator().manual_seed(seed)
    dims = {"q_proj": (s.hidden, s.hidden), "k_proj": (s.hidden, s.hidden * s.kv_heads // s.heads),
            "v_proj": (s.hidden, s.hidden * s.kv_heads // s.heads), "o_proj": (s.hidden, s.hidden),
            "gate_proj": (s.hidden, s.intermediate), "up_proj": (s.hidden, s.intermediate),
            "down_proj": (s.intermediate, s.hidden)}
    tensors = {}
    for layer in range(s.layers):
        for module in s.targets:
            d_in, d_out = dims[module]
            prefix = f"base_model.model.model.layers.{layer}.{MODULE_PARENT[module]}.{module}"
            tensors[f"{prefix}.lora_A.weight"] = (torch.randn(rank, d_in, generator=gen) * d_in ** -0.5).bfloat16()
            tensors[f"{prefix}.lora_B.weight"] = (torch.randn(d_out, rank, generator=gen) * 0.02).bfloat16()
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out_dir / "adapter_model.safetensors"))
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": 2 * rank,
              "target_modules": list(s.targets), "lora_dropout": 0.0, "bias": "none", "inference_mode": True}
    (out_dir / "adapter_config.json").write_text(json.dumps(config))
    return str(out_dir)


def make_checkpoints(s: Settings, root: Path, device: str) -> tuple[str, dict[str, str]]:
    """The base model and `num_adapters` PEFT folders of ranks cycling through `s.ranks`."""
    model_dir = build_model(s, root / "model", device)
    ranks = {f"adapter{i}": s.ranks[i % len(s.ranks)] for i in range(s.num_adapters)}
    paths = {name: write_adapter(s, root / name, rank, seed=i) for i, (name, rank) in enumerate(ranks.items())}
    return model_dir, paths


def merge_adapter(model_dir: str, adapter_dir: str, out_dir: Path) -> str:
    """The base with one adapter folded in: W [out, in] += (alpha / r) * B @ A."""
    state = load_state_dict(model_dir)
    lora = load_file(str(Path(adapter_dir) / "adapter_model.safetensors"))
    config = json.loads((Path(adapter_dir) / "adapter_config.json").read_text())
    scale = config["lora_alpha"] / config["r"]
    for key, a in lora.items():
        if ".lora_A." in key:
            b = lora[key.replace(".lora_A.", ".lora_B.")]
            name = key.removeprefix("base_model.model.").replace(".lora_A.weight", ".weight")
            state[name] = (state[name].float() + scale * (b.float() @ a.float())).to(state[name].dtype)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    (out_dir / "config.json").write_text((Path(model_dir) / "config.json").read_text())
    return str(out_dir)


# -- workload ------------------------------------------------------------------------------------
def make_prompts(n: int, s: Settings, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(100, s.vocab) for _ in range(s.prompt_len)] for _ in range(n)]


def pick_adapters(n: int, s: Settings, seed: int) -> list[str]:
    """Adapter of each request under power-law popularity: P(i) ~ (i + 1) ** -alpha."""
    rng = random.Random(seed)
    weights = [(i + 1) ** -s.popularity_alpha for i in range(s.num_adapters)]
    return [f"adapter{i}" for i in rng.choices(range(s.num_adapters), weights, k=n)]


def new_engine(model_dir: str, s: Settings, device: str, adapters: dict[str, str]) -> Engine:
    config = EngineConfig(block_size=16, num_blocks=s.num_blocks, max_num_batched_tokens=s.token_budget,
                          max_num_seqs=s.max_num_seqs, max_adapter_slots=s.max_adapter_slots,
                          max_lora_rank=max(s.ranks), dtype="bfloat16")
    engine = Engine(model_dir, config, device)
    for name, path in adapters.items():
        engine.register_adapter(name, path)
    return engine


def submit(engine: Engine, tag: str, prompts: list[list[int]], adapters: list[str | None],
           max_new_tokens: int = 0) -> None:
    for i, (prompt, adapter) in enumerate(zip(prompts, adapters)):
        if max_new_tokens:
            engine.add_request(f"{tag}{i}", prompt, RequestKind.GENERATE, adapter=adapter,
                               max_new_tokens=max_new_tokens)
        else:
            engine.add_request(f"{tag}{i}", prompt, RequestKind.SCORE, adapter=adapter, label_token_ids=LABEL_IDS)


# -- measurements --------------------------------------------------------------------------------
def score_rps(engine: Engine, prompts: list[list[int]], adapters: list[str | None], tag: str) -> float:
    submit(engine, f"warm-{tag}", prompts[:4], adapters[:4])
    engine.run_until_done()
    submit(engine, tag, prompts, adapters)
    started = time.perf_counter()
    engine.run_until_done()
    return len(prompts) / (time.perf_counter() - started)


@torch.inference_mode()
def peft_mixed_rps(model_dir: str, paths: dict[str, str], prompts: list[list[int]], adapters: list[str],
                   batch: int, device: str) -> float:
    """HF + PEFT serving mixed-adapter batches (`adapter_names=`), every prompt the same length."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).to(device).eval()
    names = sorted(set(adapters))
    model = PeftModel.from_pretrained(base, paths[names[0]], adapter_name=names[0]).eval()
    for name in names[1:]:
        model.load_adapter(paths[name], adapter_name=name)
    ids = torch.tensor(prompts, device=device)                                    # [N, S]
    forward = lambda lo, hi: model(input_ids=ids[lo:hi], adapter_names=adapters[lo:hi],  # noqa: E731
                                   logits_to_keep=1).logits[:, -1, list(LABEL_IDS)].softmax(-1).cpu()
    forward(0, batch)
    started = time.perf_counter()
    for lo in range(0, len(prompts), batch):
        forward(lo, lo + batch)
    return len(prompts) / (time.perf_counter() - started)


def decode_batch1_ms(engine: Engine, prompt: list[int], adapter: str, num_tokens: int) -> float:
    """Median wall time of a decode step with one running request (its prefill step excluded)."""
    submit(engine, "decode1-", [prompt], [adapter], max_new_tokens=num_tokens + 1)
    engine.step()
    times = []
    while engine.has_unfinished():
        started = time.perf_counter()
        engine.step()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e3


def decode_tokens_per_s(engine: Engine, prompts: list[list[int]], adapters: list[str], num_tokens: int) -> float:
    """Generated tokens/s once all requests have prefilled and decode together."""
    submit(engine, "decode64-", prompts, adapters, max_new_tokens=num_tokens + 1)
    running = engine.scheduler.running
    while not (len(running) == len(prompts) and all(r.output_token_ids for r in running)):
        engine.step()
        running = engine.scheduler.running
    generated = sum(len(r.output_token_ids) for r in running)
    started = time.perf_counter()
    engine.run_until_done()
    return (len(prompts) * (num_tokens + 1) - generated) / (time.perf_counter() - started)


def step_breakdown(engine: Engine, prompts: list[list[int]], adapters: list[str], device: str) -> dict:
    """Per score step: wall time, GPU busy time (profiler), and the host parts we can time."""
    from torch.profiler import ProfilerActivity, profile

    totals = time_parts(host_parts(engine))
    submit(engine, "profile-", prompts, adapters)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    started, steps = time.perf_counter(), 0
    with profile(activities=activities) as prof:
        while engine.has_unfinished():
            engine.step()
            steps += 1
    wall_s = time.perf_counter() - started
    gpu_us = sum(e.self_device_time_total for e in prof.key_averages()) if device == "cuda" else 0.0
    per_step = {f"{k}_ms": v * 1e3 / steps for k, v in totals.items()}
    return {"steps": steps, "wall_ms": wall_s * 1e3 / steps, "gpu_busy_ms": gpu_us / 1e3 / steps,
            "host_overhead_ms": (wall_s * 1e3 - gpu_us / 1e3) / steps, **per_step,
            "note": "profiled run; wall includes profiler cost, host_overhead = wall - gpu_busy"}


def host_overhead(s: Settings, root: Path) -> dict:
    """ms per step of each host-side part of `Engine.step` for score requests (device time excluded)."""
    model_dir, paths = make_checkpoints(s, root, "cpu")
    engine = new_engine(model_dir, s, "cpu", paths)
    totals = time_parts({**host_parts(engine), "lora_segments": (engine.runner, "_segments"),
                         "forward_cpu": (engine.model, "forward")})
    submit(engine, "host-", make_prompts(s.score_requests, s, seed=1), pick_adapters(s.score_requests, s, seed=2))
    started, steps = time.perf_counter(), 0
    while engine.has_unfinished():
        engine.step()
        steps += 1
    wall_ms = (time.perf_counter() - started) * 1e3
    per_step = {f"{k}_ms": v * 1e3 / steps for k, v in totals.items()}
    host_ms = sum(v for k, v in per_step.items() if k != "forward_cpu_ms")
    return {"steps": steps, "requests_per_step": s.score_requests / steps, **per_step,
            "engine_host_ms_per_step": wall_ms / steps - per_step["forward_cpu_ms"],
            "timed_parts_ms_per_step": host_ms, "tokenize_per_request": tokenize_ms_per_request(s.prompt_len),
            "note": "forward_cpu is the tiny model's CPU forward, not GPU time; the rest is host work per step"}


def host_parts(engine: Engine) -> dict[str, tuple[object, str]]:
    """The host-side parts of `Engine.step` worth timing, as (owner, method name)."""
    return {"schedule": (engine.scheduler, "schedule"), "scheduler_update": (engine.scheduler, "update"),
            "prepare_inputs": (engine.runner, "_prepare"), "read_outputs": (engine.runner, "_read_outputs")}


def time_parts(parts: dict[str, tuple[object, str]]) -> dict[str, float]:
    """Wrap each (owner, method) so its seconds add up under its key in the returned dict."""
    totals = dict.fromkeys(parts, 0.0)
    for key, (owner, name) in parts.items():
        setattr(owner, name, _timed(getattr(owner, name), totals, key))
    return totals


def _timed(fn, totals: dict[str, float], key: str):
    def wrapper(*args, **kwargs):
        started = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            totals[key] += time.perf_counter() - started
    return wrapper


def tokenize_ms_per_request(prompt_len: int) -> dict:
    """Byte-level BPE (a 300-token stand-in vocab: no hub downloads), scaled to a prompt_len-token prompt."""
    from transformers import AutoTokenizer

    from tests.inference.tiny_models import WORDS, build_tiny_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = AutoTokenizer.from_pretrained(build_tiny_tokenizer(tmp))
    rng = random.Random(0)
    texts = [" ".join(rng.choice(WORDS) for _ in range(prompt_len)) for _ in range(64)]
    started = time.perf_counter()
    num_tokens = sum(len(tokenizer.encode(t)) for t in texts)
    ms_per_token = (time.perf_counter() - started) * 1e3 / num_tokens
    return {"ms_per_request": ms_per_token * prompt_len, "ms_per_1k_tokens": ms_per_token * 1e3}


def engine_kernels() -> str:
    """Which kernels the engine's forward calls: our dispatchers (Triton on CUDA) or the torch refs."""
    import inference.engine.lora as lora_module
    import inference.engine.model as model_module

    wired = [hasattr(model_module, "paged_attention"), hasattr(lora_module, "sgmv")]
    return {(True, True): "inference.kernels dispatch", (False, False): "torch references"}.get(
        tuple(wired), f"mixed (paged_attention dispatch={wired[0]}, sgmv dispatch={wired[1]})")


# -- main ----------------------------------------------------------------------------------------
def run(s: Settings, device: str, root: Path) -> dict:
    model_dir, paths = make_checkpoints(s, root, device)
    prompts = make_prompts(s.score_requests, s, seed=1)
    adapters = pick_adapters(s.score_requests, s, seed=2)
    engine = new_engine(model_dir, s, device, paths)
    rps_100 = score_rps(engine, prompts, adapters, "score-")
    merged = new_engine(merge_adapter(model_dir, paths["adapter0"], root / "merged"), s, device, {})
    rps_merged = score_rps(merged, make_prompts(s.score_requests, s, seed=3), [None] * s.score_requests, "merged-")
    del merged
    decode1 = decode_batch1_ms(engine, make_prompts(1, s, seed=4)[0], "adapter1", s.decode_tokens)
    graphs, engine.runner.decode_graphs = engine.runner.decode_graphs, None
    decode1_eager = decode_batch1_ms(engine, make_prompts(1, s, seed=4)[0], "adapter1", s.decode_tokens)
    engine.runner.decode_graphs = graphs
    decode64 = decode_tokens_per_s(engine, make_prompts(s.decode_batch, s, seed=5),
                                   pick_adapters(s.decode_batch, s, seed=6), s.decode_tokens)
    breakdown = step_breakdown(engine, make_prompts(64, s, seed=7), pick_adapters(64, s, seed=8), device)
    del engine
    peft_prompts, peft_adapters = make_prompts(s.peft_requests, s, seed=9), pick_adapters(s.peft_requests, s, seed=10)
    peft_rps = peft_mixed_rps(model_dir, paths, peft_prompts, peft_adapters, s.peft_batch, device)
    return {"score_rps_100_adapters": rps_100, "score_rps_merged": rps_merged,
            "ratio_100_adapters_vs_merged": rps_100 / rps_merged, "peft_mixed_rps": peft_rps,
            "speedup_vs_peft_mixed": rps_100 / peft_rps, "decode_batch1_ms": decode1,
            "decode_batch1_ms_without_cuda_graphs": decode1_eager,
            "cuda_graph_replays": graphs.num_replays if graphs is not None else 0,
            "decode_batch64_tokens_per_s": decode64, "step_breakdown": breakdown,
            "tokenize_per_request": tokenize_ms_per_request(s.prompt_len), "engine_kernels": engine_kernels(),
            "kernels": kernel_timings(s) if device == "cuda" else None}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on any device; writes nothing")
    parser.add_argument("--score-requests", type=int, default=None)
    parser.add_argument("--host", action="store_true", help="host work per step at full shapes, any device")
    parser.add_argument("--all-linear", action="store_true", help="adapters on all 7 projections, not q/k/v/o")
    args = parser.parse_args()
    if args.host:
        with tempfile.TemporaryDirectory() as tmp:
            print(json.dumps({"host_overhead": host_overhead(HOST, Path(tmp)), "settings": asdict(HOST),
                              "command": " ".join(["python"] + sys.argv)}, indent=2))
        return 0
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device != "cuda" and not args.smoke:
        print("gpu_engine.py needs a CUDA GPU (none found); refusing to report CPU figures. "
              "Use --smoke to check the script on CPU.", file=sys.stderr)
        return 2
    s = SMOKE if args.smoke else Settings()
    s = replace(s, score_requests=args.score_requests or s.score_requests,
                targets=tuple(MODULE_PARENT) if args.all_linear else s.targets)
    with tempfile.TemporaryDirectory() as tmp:
        figures = run(s, device, Path(tmp))
    result = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", **figures,
              "settings": asdict(s), "torch": torch.__version__, "command": " ".join(["python"] + sys.argv)}
    print(json.dumps(result, indent=2))
    if not args.smoke:
        RESULTS_PATH.parent.mkdir(parents=True, exist_ok=True)
        RESULTS_PATH.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
