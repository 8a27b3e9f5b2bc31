"""Kernel tests run the Triton kernels; without a GPU they run on CPU through Triton's interpreter.

TRITON_INTERPRET must be set before `@triton.jit` runs. Our kernels are imported by the test
modules, after this file; but `peft` (imported by tests/inference/conftest.py) has usually imported
triton already, so triton.language's own jit helpers (tl.zeros, tl.max, tl.sum...) were built for
the compiler. `_interpret_triton_language` rebuilds those few for the interpreter.
"""
from __future__ import annotations

import os
import sys

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")

# (atol, rtol) against the torch reference run in the same dtype
TOLERANCES = {torch.float32: (1e-4, 1e-4), torch.float16: (1e-2, 1e-2), torch.bfloat16: (6e-2, 3e-2)}
DTYPES = [pytest.param(d, id=str(d).removeprefix("torch.")) for d in TOLERANCES]


def _interpret_triton_language() -> None:
    """Swap triton.language's compiled-mode jit helpers for interpreted ones (same functions)."""
    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    rebuilt: dict[int, InterpretedFunction] = {}
    for module in (tl, tl.core, tl.standard, tl.math):
        for name, value in list(vars(module).items()):
            if isinstance(value, JITFunction):
                setattr(module, name, rebuilt.setdefault(id(value), InterpretedFunction(value.fn)))


if not torch.cuda.is_available() and "triton" in sys.modules:
    _interpret_triton_language()


@pytest.fixture(autouse=True)
def force_triton(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the `inference.kernels` dispatchers pick Triton even for CPU tensors."""
    monkeypatch.setenv("FINLLM_FORCE_TRITON", "1")
