"""Engine settings, validated once at construction."""
from __future__ import annotations

from dataclasses import dataclass

QUANT_MODES = ("none", "int8", "auto")   # "int8": inference.kernels.int8 (this module stays torch-free)


DTYPES = ("float64", "float32", "float16", "bfloat16")   # names of torch dtypes (the engine takes torch.<name>)
AUTO_DTYPE = "auto"                                     # the processor's choice, resolved by the Engine


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """Sizes of the KV pool, the per-step budget and the adapter slots.

    `max_num_batched_tokens` is the token budget of one step (prefill chunks and
    decodes together), `max_yielding_batched_tokens` the part of it less urgent requests
    may use; `starvation_timeout_s` is how long a request may wait before
    it jumps ahead of earlier deadlines. `cuda_graph_sizes` are the padded batch sizes
    whose decode steps are captured as CUDA graphs (CUDA devices only).
    """

    block_size: int = 16
    num_blocks: int = 512
    max_num_batched_tokens: int = 2048
    # tokens of less urgent requests (HTTP, warm-ups) in one step: a forecast that comes while a step runs waits
    # for it (on 2 CPU cores in float32, 256 rows take about a second; the batch-invariant tile is 256 rows too)
    max_yielding_batched_tokens: int = 256
    max_num_seqs: int = 64
    max_adapter_slots: int = 8
    max_lora_rank: int = 64
    starvation_timeout_s: float = 5.0
    enable_prefix_caching: bool = True
    # "auto": by processor (inference.engine.cpu.default_dtype: bfloat16 on CUDA and on CPUs with native bf16,
    # else float32); byte-identical CPU replays come from `batch_invariant`, in any dtype
    dtype: str = "float32"
    cuda_graph_sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 24, 32, 48, 64)   # () turns decode graphs off
    # a request's logits bit-identical whatever it is batched with (inference.kernels.invariant); None: on
    # wherever the torch (CPU) path runs, off on the Triton path, which has no such mode (True there: an error)
    batch_invariant: bool | None = None
    # "int8": the layers' matrices in int8 through fbgemm, CPU only (inference.kernels.int8); "none": in `dtype`;
    # "auto": int8 on a CPU whose fast dtype is float32 (no native bf16), else none (inference.engine.cpu)
    quant: str = "none"

    def __post_init__(self) -> None:
        for name in ("block_size", "num_blocks", "max_num_batched_tokens", "max_yielding_batched_tokens",
                     "max_num_seqs", "max_adapter_slots", "max_lora_rank"):
            if getattr(self, name) < 1:
                raise ValueError(f"EngineConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.starvation_timeout_s <= 0:
            raise ValueError("EngineConfig.starvation_timeout_s must be > 0")
        if any(n < 1 for n in self.cuda_graph_sizes):
            raise ValueError(f"EngineConfig.cuda_graph_sizes must be >= 1, got {self.cuda_graph_sizes}")
        if self.quant not in QUANT_MODES:
            raise ValueError(f"EngineConfig.quant must be one of {QUANT_MODES}, got {self.quant!r}")
        if self.dtype not in DTYPES + (AUTO_DTYPE,):
            raise ValueError(f"EngineConfig.dtype must be one of {DTYPES + (AUTO_DTYPE,)}, got {self.dtype}")

    @property
    def max_cached_tokens(self) -> int:
        return self.block_size * self.num_blocks
