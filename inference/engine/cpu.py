"""The processor the engine runs on, and the dtype it computes in when the caller names none.

bfloat16 where the CPU multiplies it natively (AMX `amx_bf16` or AVX-512 `avx512_bf16` in /proc/cpuinfo, and
torch dispatching AVX-512 or better); float32 elsewhere. CUDA devices compute in bfloat16.
"""
from __future__ import annotations

import platform
from pathlib import Path

import torch

BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def _cpuinfo() -> str:
    path = Path("/proc/cpuinfo")
    return path.read_text() if path.exists() else ""


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The flags of the first processor listed in /proc/cpuinfo (empty where there is none)."""
    for line in (_cpuinfo() if cpuinfo is None else cpuinfo).splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def cpu_model_name(cpuinfo: str | None = None) -> str:
    for line in (_cpuinfo() if cpuinfo is None else cpuinfo).splitlines():
        if line.startswith("model name"):
            return line.partition(":")[2].strip()
    return platform.processor() or platform.machine()


def native_bf16(flags: set[str], capability: str) -> bool:
    """bfloat16 matrix products in hardware, and torch's kernels built for that level (AVX512, AMX...)."""
    return any(f in flags for f in BF16_FLAGS) and capability.startswith(("AVX512", "AMX"))


def default_dtype(device: str | torch.device) -> str:
    """Name of the dtype the engine uses on `device` when its config names none."""
    if torch.device(device).type == "cuda":
        return "bfloat16"
    return "bfloat16" if native_bf16(cpu_flags(), torch.backends.cpu.get_cpu_capability()) else "float32"


def default_quant(device: str | torch.device, dtype: str) -> str:
    """What `quant="auto"` means on `device` computing in `dtype`: int8 on a CPU computing in float32 (fbgemm's
    int8 products run about twice float32's there), else none (native bf16, e.g. AMX, outruns fbgemm's int8)."""
    from inference.kernels.int8 import INT8_QUANT, int8_supported

    cpu_float32 = torch.device(device).type == "cpu" and dtype == "float32"
    return INT8_QUANT if cpu_float32 and int8_supported() else "none"


def describe_processor() -> str:
    """One line for benchmark output: model name, torch's capability, bf16 flags present."""
    present = sorted(cpu_flags() & set(BF16_FLAGS)) or ["no bf16 flags"]
    return (f"{cpu_model_name()} | torch capability {torch.backends.cpu.get_cpu_capability()} | "
            f"{' '.join(present)} | {torch.get_num_threads()} threads")
