"""The one place a scorer is built: the inference worker, the evaluation and the benchmarks all call
`build_scorer`, so they score with the same backend settings."""
from __future__ import annotations

from pathlib import Path

from inference.scorers.base import Scorer

ENGINES = ("paged", "hf")


def build_scorer(engine: str, model_dir: str | Path, *, adapters: dict[str, str] | None = None,
                 device: str | None = None, dtype: str | None = None, max_batch: int = 32,
                 prefix_caching: bool = True) -> Scorer:
    """`engine` "paged" (our multi-LoRA engine) or "hf" (transformers + PEFT) over the checkpoint in `model_dir`.

    `device` None: "cuda" when available, else "cpu". `dtype` (paged engine only; "hf" runs float32) None:
    float64 on CPU (replays give identical forecasts, bench/RESULTS.md), bfloat16 on CUDA. The paged engine
    answers items naming an unregistered adapter as failed (status llm_error) instead of failing the batch.
    """
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if engine == "paged":
        from inference.engine.config import EngineConfig
        from inference.scorers.engine import EngineScorer
        config = EngineConfig(dtype=dtype or ("float64" if device == "cpu" else "bfloat16"),
                              enable_prefix_caching=prefix_caching)
        return EngineScorer(str(model_dir), adapters=adapters, device=device, config=config)
    if engine == "hf":
        from inference.scorers.hf import HFScorer
        return HFScorer(str(model_dir), device=device, max_batch=max_batch, adapters=adapters)
    raise ValueError(f"unknown engine {engine!r}: use 'hf' or 'paged'")
