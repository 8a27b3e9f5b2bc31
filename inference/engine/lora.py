"""LoRA weights: PEFT loading (host) and device slot stacks; the segmented op is `inference.kernels.sgmv`."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file

from inference.kernels import sgmv, step_segments
from inference.kernels.invariant import sgmv_tiled
from inference.kernels.reference import LoraSegment

if TYPE_CHECKING:
    from inference.kernels.sgmv import SegmentTable

LORA_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_KEY = re.compile(r"layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.lora_([AB])\.weight$")
_UNSUPPORTED = ("use_dora", "lora_bias")


@dataclass(frozen=True, slots=True)
class LoraAdapter:
    """Host copy of one adapter: `a[(layer, module)]`: [in, r], `b[(layer, module)]`: [r, out]."""

    rank: int
    scale: float
    a: dict[tuple[int, str], torch.Tensor]
    b: dict[tuple[int, str], torch.Tensor]


def load_peft_adapter(path: str | Path, dtype: torch.dtype = torch.float32) -> LoraAdapter:
    """Read a PEFT LoRA folder (`adapter_config.json` + `adapter_model.safetensors`)."""
    path = Path(path)
    config = json.loads((path / "adapter_config.json").read_text())
    _check_supported(config)
    rank, alpha = int(config["r"]), float(config["lora_alpha"])
    scale = alpha / rank ** 0.5 if config.get("use_rslora") else alpha / rank
    a, b = {}, {}
    for key, tensor in load_file(str(path / "adapter_model.safetensors")).items():
        match = _KEY.search(key)
        if match is None:
            raise ValueError(f"unsupported LoRA tensor {key!r} in {path}")
        layer, module, which = int(match[1]), match[2], match[3]
        if which == "A":
            a[(layer, module)] = tensor.to(dtype).t().contiguous()   # [in, r]
        else:
            b[(layer, module)] = tensor.to(dtype).t().contiguous()   # [r, out]
    return LoraAdapter(rank, scale, a, b)


def _check_supported(config: dict) -> None:
    if config.get("peft_type", "LORA") != "LORA":
        raise ValueError(f"only LoRA adapters are supported, got {config.get('peft_type')}")
    for flag in _UNSUPPORTED:
        if config.get(flag):
            raise ValueError(f"LoRA option {flag} is not supported")
    if config.get("rank_pattern") or config.get("alpha_pattern") or config.get("modules_to_save"):
        raise ValueError("rank_pattern, alpha_pattern and modules_to_save are not supported")


class LoraSlotWeights:
    """Device stacks holding the adapters now in slots: per module, a: [L, S, in, R], b: [L, S, R, out]."""

    def __init__(self, num_layers: int, num_slots: int, max_rank: int,
                 module_dims: dict[str, tuple[int, int]], dtype: torch.dtype, device: torch.device) -> None:
        self.max_rank = max_rank
        self.a = {m: torch.zeros(num_layers, num_slots, d_in, max_rank, dtype=dtype, device=device)
                  for m, (d_in, _) in module_dims.items()}
        self.b = {m: torch.zeros(num_layers, num_slots, max_rank, d_out, dtype=dtype, device=device)
                  for m, (_, d_out) in module_dims.items()}
        self.ranks = [0] * num_slots
        self.scales = [0.0] * num_slots

    def load(self, slot: int, adapter: LoraAdapter) -> None:
        """Copy an adapter into `slot`; modules it does not target become zero."""
        if adapter.rank > self.max_rank:
            raise ValueError(f"adapter rank {adapter.rank} exceeds max_lora_rank {self.max_rank}")
        non_blocking = next(iter(self.a.values())).is_cuda
        for module in self.a:
            self.a[module][:, slot].zero_()
            self.b[module][:, slot].zero_()
        for (layer, module), a in adapter.a.items():
            self.a[module][layer, slot, :, :adapter.rank].copy_(a, non_blocking=non_blocking)
            self.b[module][layer, slot, :adapter.rank].copy_(adapter.b[(layer, module)], non_blocking=non_blocking)
        self.ranks[slot] = adapter.rank
        self.scales[slot] = adapter.scale


@dataclass(frozen=True, slots=True)
class LoraBatch:
    """The step's LoRA view: which token segments use which slot, over the slot stacks.

    `kernel_segments` is the same segments in the form the `sgmv` dispatcher takes (a device table
    on the Triton path), built once per step by `for_step`. `invariant`: the step is batch-invariant, the
    deltas run over fixed row tiles (`inference.kernels.invariant.sgmv_tiled`, torch path only).
    """

    weights: LoraSlotWeights
    segments: list[LoraSegment]
    kernel_segments: list[LoraSegment] | SegmentTable
    invariant: bool = False

    @classmethod
    def for_step(cls, weights: LoraSlotWeights, segments: list[LoraSegment], invariant: bool = False) -> "LoraBatch":
        if invariant:
            return cls(weights, segments, segments, invariant=True)
        return cls(weights, segments, step_segments(segments, next(iter(weights.a.values()))))

    def apply(self, y: torch.Tensor, x: torch.Tensor, layer: int, module: str) -> None:
        """y: [T, out] += each token's LoRA delta of `module` in `layer`, x: [T, in]."""
        if not self.segments or module not in self.weights.a:
            return
        a, b = self.weights.a[module][layer], self.weights.b[module][layer]
        if self.invariant:
            sgmv_tiled(y, x, a, b, self.segments)
        else:
            sgmv(y, x, a, b, self.kernel_segments)
