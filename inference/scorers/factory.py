"""The one place a scorer is built: the inference worker, the evaluation and the benchmarks all call
`build_scorer`, so they score with the same backend settings."""
from __future__ import annotations

from pathlib import Path

from inference.scorers.base import Scorer

ENGINES = ("paged", "hf")


def build_scorer(engine: str, model_dir: str | Path, *, adapters: dict[str, str] | None = None,
                 device: str | None = None, dtype: str | None = None, max_batch: int = 32,
                 prefix_caching: bool = True, batch_invariant: bool | None = None,
                 quant: str | None = None) -> Scorer:
    """`engine` "paged" (our multi-LoRA engine) or "hf" (transformers + PEFT) over the checkpoint in `model_dir`.

    `device` None: "cuda" when available, else "cpu". `dtype` (paged engine only; "hf" runs float32) None:
    the processor's fast dtype ("auto": bfloat16 on CUDA and on CPUs with native bf16, else float32).
    `batch_invariant` (paged engine) None: on for the CPU path, where a request's logits are then bit-identical
    whatever it is batched with, so replays give identical forecasts without float64 (bench/RESULTS.md);
    the Triton path has no such mode. `quant` (paged engine, CPU) "int8": the layers' matrices in int8
    (`inference.kernels.int8`); None or "none": in `dtype`. The paged engine answers items naming an unregistered adapter as
    failed (status llm_error) instead of failing the batch.
    """
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if engine == "paged":
        from inference.engine.config import AUTO_DTYPE, EngineConfig
        from inference.scorers.engine import EngineScorer
        config = EngineConfig(dtype=dtype or AUTO_DTYPE, enable_prefix_caching=prefix_caching,
                              batch_invariant=batch_invariant, quant=quant or "none")
        return EngineScorer(str(model_dir), adapters=adapters, device=device, config=config)
    if engine == "hf":
        from inference.scorers.hf import HFScorer
        return HFScorer(str(model_dir), device=device, max_batch=max_batch, adapters=adapters)
    raise ValueError(f"unknown engine {engine!r}: use 'hf' or 'paged'")
