"""The engine's dtype when the caller names none: bfloat16 only where the processor multiplies it natively."""
import pytest
import torch

from inference.engine import cpu
from inference.engine.config import EngineConfig

CPUINFO = """processor\t: 0
model name\t: Some CPU 9000
flags\t\t: fpu sse2 avx2 avx512f {extra}
"""


@pytest.mark.parametrize("extra, capability, native", [
    ("avx512_bf16", "AVX512", True), ("amx_bf16 amx_tile", "AVX512", True),
    ("", "AVX512", False), ("avx512_bf16", "AVX2", False), ("avx512_bf16", "DEFAULT", False)])
def test_native_bf16_needs_the_flag_and_torch_kernels_for_it(extra, capability, native):
    flags = cpu.cpu_flags(CPUINFO.format(extra=extra))
    assert "avx2" in flags
    assert cpu.native_bf16(flags, capability) is native


def test_model_name_and_missing_cpuinfo():
    assert cpu.cpu_model_name(CPUINFO) == "Some CPU 9000"
    assert cpu.cpu_flags("") == set()


def test_default_dtype_follows_the_processor(monkeypatch):
    assert cpu.default_dtype("cuda") == "bfloat16"
    monkeypatch.setattr(cpu, "cpu_flags", lambda: {"avx512_bf16"})
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    assert cpu.default_dtype("cpu") == "bfloat16"
    monkeypatch.setattr(cpu, "cpu_flags", lambda: set())
    assert cpu.default_dtype("cpu") == "float32"
    assert "torch capability AVX512" in cpu.describe_processor()


def test_auto_dtype_is_resolved_by_the_engine(tiny_qwen2):
    from inference.engine.engine import Engine
    assert EngineConfig().dtype == "float32"              # callers of the defaults keep float32 (HF parity)
    engine = Engine(tiny_qwen2["model_dir"], EngineConfig(block_size=4, num_blocks=8, dtype="auto"))
    assert engine.model.embed.dtype == getattr(torch, cpu.default_dtype("cpu"))
    with pytest.raises(ValueError, match="dtype"):
        EngineConfig(dtype="int8")
