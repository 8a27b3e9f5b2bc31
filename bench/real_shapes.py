"""The engine on a real-shaped model: ours vs transformers, fp32 and bf16, on the processor at hand.

A random-weight Llama with SmolLM2-135M's shapes (30 layers, hidden 576, 9 heads / 3 KV heads, head_dim 64,
vocab 49152, tied embeddings): speed does not depend on the weight values. Workload: `--requests` score
requests of `--prompt-len` tokens, all queued at once, prefix cache off; transformers runs them in padded
batches of `--hf-batch` (no adapter). Then decode tokens/s at batch 1 (a prompt of `--prompt-len`, then
`--decode-tokens` greedy tokens; prefill excluded). Each figure is the best of `--repeats`; ratios compare
figures of this same run. `--batch-invariant` runs ours with the engine's batch-invariant CPU mode on (the
default), off, or both ("ours" and "ours_variant"). The first line states the processor; the last line is one
JSON object.

    python bench/real_shapes.py                     # about two minutes on 2 CPU cores
    python bench/real_shapes.py --dtypes bfloat16 --repeats 3 --batch-invariant both
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from capacity import best_of  # noqa: E402  (bench/ is this script's folder)
from inference.engine.config import EngineConfig  # noqa: E402
from inference.engine.cpu import default_dtype, describe_processor  # noqa: E402
from inference.engine.engine import Engine  # noqa: E402
from inference.engine.sequence import RequestKind  # noqa: E402

LABEL_IDS = (11, 12, 13)
SMOLLM2 = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
               num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True, rope_theta=1e5,
               max_position_embeddings=8192, rms_norm_eps=1e-5)


def build_model(out_dir: Path) -> str:
    from transformers import LlamaConfig, LlamaForCausalLM

    if not (out_dir / "config.json").exists():
        torch.manual_seed(0)
        LlamaForCausalLM(LlamaConfig(**SMOLLM2)).save_pretrained(out_dir)
    return str(out_dir)


def ours(model_dir: str, dtype: str, prompts: list[list[int]], args, invariant: bool) -> dict:
    config = EngineConfig(num_blocks=-(-len(prompts) * (args.prompt_len + args.decode_tokens) // 16) + 8,
                          enable_prefix_caching=False, dtype=dtype, max_num_seqs=len(prompts),
                          batch_invariant=invariant)
    engine = Engine(model_dir, config)
    counter = iter(range(1 << 30))

    def score_all() -> None:
        for prompt in prompts:
            engine.add_request(f"s{next(counter)}", prompt, RequestKind.SCORE, label_token_ids=LABEL_IDS)
        engine.run_until_done()

    def decode() -> float:
        engine.add_request(f"g{next(counter)}", prompts[0], RequestKind.GENERATE, max_new_tokens=args.decode_tokens + 1)
        engine.step()                                            # the whole prompt fits one step's budget
        start = time.perf_counter()
        engine.run_until_done()
        return args.decode_tokens / (time.perf_counter() - start)

    decode()                                                     # warm-up
    return {"rps": len(prompts) / best_of(args.repeats, score_all),
            "decode_tok_s": max(decode() for _ in range(args.repeats))}


def transformers_baseline(model_dir: str, dtype: str, prompts: list[list[int]], args) -> dict:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype)).eval()

    @torch.inference_mode()
    def score_all() -> None:
        for i in range(0, len(prompts), args.hf_batch):
            ids = torch.tensor(prompts[i:i + args.hf_batch])     # equal lengths: no padding needed
            model(input_ids=ids, logits_to_keep=1).logits[:, -1, list(LABEL_IDS)].softmax(-1)

    @torch.inference_mode()
    def generate(new_tokens: int) -> float:
        return best_of(args.repeats, lambda: model.generate(
            input_ids=torch.tensor(prompts[:1]), do_sample=False, max_new_tokens=new_tokens,
            min_new_tokens=new_tokens, pad_token_id=0))

    generate(2)                                                  # warm-up
    decode_s = generate(args.decode_tokens + 1) - generate(1)
    return {"rps": len(prompts) / best_of(args.repeats, score_all), "decode_tok_s": args.decode_tokens / decode_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--requests", type=int, default=24)
    parser.add_argument("--prompt-len", type=int, default=350)
    parser.add_argument("--hf-batch", type=int, default=8)
    parser.add_argument("--decode-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model-dir", help="a folder to keep the random model in between runs")
    parser.add_argument("--skip-hf", action="store_true")
    parser.add_argument("--batch-invariant", choices=("on", "off", "both"), default="on")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    processor = describe_processor()
    print(f"processor: {processor} | engine default dtype here: {default_dtype('cpu')}", flush=True)
    rng = random.Random(0)
    prompts = [[rng.randrange(100, SMOLLM2["vocab_size"]) for _ in range(args.prompt_len)] for _ in range(args.requests)]
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_model(Path(args.model_dir or tmp))
        results = {}
        for dtype in args.dtypes:
            row = {}
            if args.batch_invariant != "off":
                row["ours"] = ours(model_dir, dtype, prompts, args, invariant=True)
            if args.batch_invariant != "on":
                row["ours" if args.batch_invariant == "off" else "ours_variant"] = ours(
                    model_dir, dtype, prompts, args, invariant=False)
            if not args.skip_hf:
                row["hf"] = transformers_baseline(model_dir, dtype, prompts, args)
                row["ratio"] = {k: row["ours"][k] / row["hf"][k] for k in row["ours"]}
            results[dtype] = row
            print(f"{dtype:<9} " + "  ".join(f"{system}: " + " ".join(f"{k}={v:.2f}" for k, v in m.items())
                                              for system, m in row.items()), flush=True)
    print(json.dumps({"processor": processor, "threads": args.threads, "requests": args.requests,
                      "batch_invariant": args.batch_invariant,
                      "prompt_len": args.prompt_len, "hf_batch": args.hf_batch,
                      "results": {d: {s: {k: round(v, 3) for k, v in m.items()} for s, m in row.items()}
                                  for d, row in results.items()}}))


if __name__ == "__main__":
    main()
