"""Int8 matrix products on the CPU, batch-invariant by construction (`FINLLM_ENGINE_QUANT=int8`).

Weights are int8 per output channel (symmetric, scale = max |w| / 127). Activations are quantised per row:
each row is divided by its own max |x|, so it lies in [-1, 1], and a sentinel row [1, -1, 0, ...] is appended
before torch's fbgemm dynamic linear, which picks one activation scale per call from the input's min and max.
With the sentinel that range is always exactly [-1, 1], so the scale is a constant and a row's quantised
values depend on that row alone. The products are then summed in int32, which is exact in any order, and
rescaled element by element (fbgemm's column scale, then the row's max |x|). So a row's result is
bit-identical whatever rows share the call and whatever the call's size: no fixed tiles are needed.

Why not weight-only int8 (torch's `_weight_int8pack_mm`)? On CPUs without AVX-512 it falls back to a scalar
kernel: about 1 GFLOP/s against 50 in float32 (measured on an AMD EPYC, AVX2). fbgemm's u8 x s8 kernels run on
AVX2 and AVX-512 alike at about twice float32's rate, for prefill and decode.

fbgemm's x86 path keeps activations in 7 bits (`reduce_range`) so that its 16-bit pairwise sums cannot
saturate. Measured error of one product on random data: about 1.7% relative (Frobenius).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

INT8_QUANT = "int8"    # its name in EngineConfig.quant and FINLLM_ENGINE_QUANT


def int8_supported() -> bool:
    """Whether this torch has the fbgemm/x86 quantised engine the int8 products run on."""
    return any(e in torch.backends.quantized.supported_engines for e in ("x86", "fbgemm"))


@dataclass(frozen=True, slots=True)
class Int8Weight:
    """A [N, K] weight held as int8 per output channel, prepacked for fbgemm."""

    packed: torch.ScriptObject
    out_features: int
    in_features: int
    sentinel: torch.Tensor          # [K]: 1, -1, then zeros (fixes the call's activation range to [-1, 1])

    @classmethod
    def quantize(cls, weight: torch.Tensor) -> "Int8Weight":
        if weight.device.type != "cpu":
            raise ValueError("int8 weights are a CPU mode (fbgemm); got a weight on " + str(weight.device))
        if not int8_supported():
            raise RuntimeError("this torch has no fbgemm/x86 quantised engine: int8 needs an x86 CPU build")
        w = weight.detach().float()
        scales = (w.abs().amax(dim=1) / 127).clamp_min(1e-12).double()
        zeros = torch.zeros(w.shape[0], dtype=torch.long)
        with warnings.catch_warnings():       # torch marks quantised tensors deprecated; torch 2.13 is pinned
            warnings.simplefilter("ignore")
            q = torch.quantize_per_channel(w, scales, zeros, 0, torch.qint8)
            packed = torch.ops.quantized.linear_prepack(q, None)
        sentinel = torch.zeros(w.shape[1])
        sentinel[:2] = torch.tensor([1.0, -1.0])
        return cls(packed, w.shape[0], w.shape[1], sentinel)

    def linear(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """x: [T, K] (any float dtype) -> [T, N] in x's dtype; row t depends on x[t] only."""
        if x.shape[0] == 0:
            return x.new_zeros(0, self.out_features)
        wide = x.float()
        row_max = wide.abs().amax(dim=1, keepdim=True).clamp_min_(torch.finfo(torch.float32).tiny)  # [T, 1]
        rows = torch.empty(x.shape[0] + 1, self.in_features)       # x's rows scaled into [-1, 1], then the sentinel
        torch.div(wide, row_max, out=rows[:-1])
        rows[-1] = self.sentinel
        y = torch.ops.quantized.linear_dynamic(rows, self.packed, True)[:-1]
        y.mul_(row_max)
        if bias is not None:
            y.add_(bias.float())
        return y.to(x.dtype)

    def nbytes(self) -> int:
        """Bytes of the int8 weight and its per-channel scales."""
        return self.out_features * self.in_features + 8 * self.out_features
