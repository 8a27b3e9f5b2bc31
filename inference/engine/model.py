"""Our Qwen2 / Llama forward over a paged KV cache, loaded from a Hugging Face folder.

Every step runs all scheduled tokens of all requests as one flat batch `[T]`; attention
writes the step's K/V into the cache slots of each token and reads each request's
context back through its block table (`inference.kernels.paged_attention`: Triton on CUDA,
`inference.kernels.cpu_attention.paged_attention_sdpa` elsewhere).

A batch-invariant step (`AttentionMetadata.invariant` set; CPU only) runs every matrix product over token
rows on fixed row tiles and the flagged requests' attention on fixed shapes (`inference.kernels.invariant`),
so a request's rows come out bit-identical whatever shares its step.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from inference.engine.lora import LoraBatch
from inference.kernels import invariant as tiled
from inference.kernels import paged_attention
from inference.engine.config import QUANT_MODES
from inference.kernels.int8 import INT8_QUANT, Int8Weight

Weight = torch.Tensor | Int8Weight

SUPPORTED = ("qwen2", "llama")


@dataclass(frozen=True, slots=True)
class ModelConfig:
    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    tie_word_embeddings: bool
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool
    max_position_embeddings: int

    @classmethod
    def from_dir(cls, model_dir: str | Path) -> "ModelConfig":
        raw = json.loads((Path(model_dir) / "config.json").read_text())
        model_type = raw.get("model_type")
        if model_type not in SUPPORTED:
            raise ValueError(f"model_type {model_type!r} not supported (have {SUPPORTED})")
        rope = raw.get("rope_parameters") or raw.get("rope_scaling") or {}
        if rope.get("rope_type", rope.get("type", "default")) != "default":
            raise ValueError(f"rope type {rope.get('rope_type')!r} not supported")
        heads = raw["num_attention_heads"]
        attention_bias = bool(raw.get("attention_bias", False))
        return cls(
            model_type, raw["vocab_size"], raw["hidden_size"], raw["intermediate_size"],
            raw["num_hidden_layers"], heads, raw.get("num_key_value_heads") or heads,
            raw.get("head_dim") or raw["hidden_size"] // heads, raw["rms_norm_eps"],
            float(rope.get("rope_theta", raw.get("rope_theta", 10000.0))),
            bool(raw.get("tie_word_embeddings", False)),
            qkv_bias=model_type == "qwen2" or attention_bias, o_bias=attention_bias,
            mlp_bias=bool(raw.get("mlp_bias", False)),
            max_position_embeddings=raw.get("max_position_embeddings", 4096))

    def lora_dims(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of every module LoRA may target."""
        h, q, kv, i = self.hidden_size, self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim, self.intermediate_size
        return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}


@dataclass(frozen=True, slots=True)
class AttentionMetadata:
    """Where the step's tokens live. `block_tables` rows past a request's blocks are padding
    never read, because each request reads only its first `seq_lens[b]` cache slots."""

    slot_mapping: torch.Tensor      # [T] cache slot (block * block_size + offset) of each token
    block_tables: torch.Tensor      # [B, max_blocks]
    seq_lens: list[int]             # [B] context length after this step
    query_start_loc: list[int]      # [B + 1] offsets of each request's tokens in the flat batch
    device_lens: tuple[torch.Tensor, torch.Tensor] | None = None   # the two lists as int32 (Triton path)
    # batch-invariant step: per request, whether its attention runs on fixed shapes (None: the mode is off)
    invariant: list[bool] | None = None

    def linear(self, x: torch.Tensor, weight: Weight, bias: torch.Tensor | None) -> torch.Tensor:
        """`F.linear`, over fixed row tiles in a batch-invariant step; int8 weights are row-invariant as they are."""
        if isinstance(weight, Int8Weight):
            return weight.linear(x, bias)
        return F.linear(x, weight, bias) if self.invariant is None else tiled.linear(x, weight, bias)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Half precision is normalised in float32 (fused `F.rms_norm`), then scaled in its own dtype, as HF does."""
    wide = x if x.dtype == torch.float64 else x.float()
    return weight * F.rms_norm(wide, weight.shape, None, eps).to(x.dtype)


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype):
    """positions: [T] -> cos, sin: [T, 1, D] (rotate-half layout)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=positions.device).float() / head_dim))
    freqs = positions.float()[:, None] * inv_freq[None, :]                       # [T, D/2]
    emb = torch.cat((freqs, freqs), dim=-1)[:, None, :]
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [T, H, D] -> a new tensor (rotate-half layout)."""
    half = x.shape[-1] // 2
    rotated = torch.cat((x[..., half:], x[..., :half]), dim=-1)
    rotated[..., :half].neg_()
    return (x * cos).add_(rotated.mul_(sin))     # the roundings of HF's x * cos + rotate_half(x) * sin


@dataclass(frozen=True, slots=True)
class LayerWeights:
    input_norm: torch.Tensor
    qkv: Weight                     # [q + 2 kv, H]  (q_proj, k_proj, v_proj fused)
    qkv_bias: torch.Tensor | None
    o: Weight                       # [H, q]
    o_bias: torch.Tensor | None
    post_norm: torch.Tensor
    gate_up: Weight                 # [2 I, H]
    gate_up_bias: torch.Tensor | None
    down: Weight                    # [H, I]
    down_bias: torch.Tensor | None

    def quantized(self) -> "LayerWeights":
        """The four matrices as int8 (`inference.kernels.int8`); norms and biases stay as they are."""
        return replace(self, **{name: Int8Weight.quantize(getattr(self, name)) for name in ("qkv", "o", "gate_up", "down")})


def load_state_dict(model_dir: str | Path) -> dict[str, torch.Tensor]:
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors in {model_dir}")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(load_file(str(file)))
    return state


class Transformer:
    """Weights plus the forward pass; holds no per-request state.

    `quant="int8"`: the layers' matrices and the full vocabulary head (`logits`, used by generation) are int8
    (CPU only); embeddings, norms, LoRA and the label rows of the head (`label_logits`) keep `dtype`.
    """

    def __init__(self, config: ModelConfig, state: dict[str, torch.Tensor],
                 dtype: torch.dtype, device: torch.device, quant: str = "none") -> None:
        if quant not in QUANT_MODES or quant == "auto":
            raise ValueError(f"quant must be one of {QUANT_MODES[:2]}, got {quant!r}")
        self.config = config
        self.quant = quant
        get = lambda name: state[name].to(device=device, dtype=dtype)  # noqa: E731
        maybe = lambda name: get(name) if name in state else None      # noqa: E731
        self.embed = get("model.embed_tokens.weight")                     # [V, H]
        self.final_norm = get("model.norm.weight")
        self.lm_head = self.embed if config.tie_word_embeddings else get("lm_head.weight")
        self.layers = [self._layer(f"model.layers.{i}.", get, maybe) for i in range(config.num_layers)]
        self.head: Weight = self.lm_head
        if quant == INT8_QUANT:
            self.layers = [layer.quantized() for layer in self.layers]
            self.head = Int8Weight.quantize(self.lm_head)

    @classmethod
    def from_dir(cls, model_dir: str | Path, dtype: torch.dtype, device: torch.device,
                 quant: str = "none") -> "Transformer":
        return cls(ModelConfig.from_dir(model_dir), load_state_dict(model_dir), dtype, device, quant)

    @staticmethod
    def _layer(prefix: str, get, maybe) -> LayerWeights:
        attn, mlp = prefix + "self_attn.", prefix + "mlp."
        qkv_bias = [maybe(attn + f"{p}.bias") for p in ("q_proj", "k_proj", "v_proj")]
        gate_up_bias = [maybe(mlp + f"{p}.bias") for p in ("gate_proj", "up_proj")]
        return LayerWeights(
            input_norm=get(prefix + "input_layernorm.weight"),
            qkv=torch.cat([get(attn + f"{p}.weight") for p in ("q_proj", "k_proj", "v_proj")]),
            qkv_bias=torch.cat(qkv_bias) if qkv_bias[0] is not None else None,
            o=get(attn + "o_proj.weight"), o_bias=maybe(attn + "o_proj.bias"),
            post_norm=get(prefix + "post_attention_layernorm.weight"),
            gate_up=torch.cat([get(mlp + "gate_proj.weight"), get(mlp + "up_proj.weight")]),
            gate_up_bias=torch.cat(gate_up_bias) if gate_up_bias[0] is not None else None,
            down=get(mlp + "down_proj.weight"), down_bias=maybe(mlp + "down_proj.bias"))

    def new_kv_cache(self, num_blocks: int, block_size: int) -> torch.Tensor:
        """[L, 2, num_blocks, block_size, Hkv, D]."""
        c = self.config
        return torch.zeros(c.num_layers, 2, num_blocks, block_size, c.num_kv_heads, c.head_dim,
                           dtype=self.embed.dtype, device=self.embed.device)

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, attn: AttentionMetadata,
                kv_cache: torch.Tensor, lora: LoraBatch | None) -> torch.Tensor:
        """input_ids, positions: [T] -> final hidden states [T, H]."""
        c = self.config
        x = self.embed[input_ids]                                                # [T, H]
        cos, sin = rope_cos_sin(positions, c.head_dim, c.rope_theta, x.dtype)
        for i, layer in enumerate(self.layers):
            h = rms_norm(x, layer.input_norm, c.rms_norm_eps)
            x.add_(self._attention(i, layer, h, cos, sin, attn, kv_cache[i], lora))   # x is this step's own
            h = rms_norm(x, layer.post_norm, c.rms_norm_eps)
            x.add_(self._mlp(i, layer, h, attn, lora))
        return rms_norm(x, self.final_norm, c.rms_norm_eps)

    def _attention(self, i: int, layer: LayerWeights, h: torch.Tensor, cos, sin,
                   attn: AttentionMetadata, kv_cache: torch.Tensor, lora: LoraBatch | None) -> torch.Tensor:
        c = self.config
        q_dim, kv_dim = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
        qkv = attn.linear(h, layer.qkv, layer.qkv_bias)                          # [T, q + 2 kv]
        if lora is not None:
            lora.apply(qkv[:, :q_dim], h, i, "q_proj")
            lora.apply(qkv[:, q_dim:q_dim + kv_dim], h, i, "k_proj")
            lora.apply(qkv[:, q_dim + kv_dim:], h, i, "v_proj")
        qk = apply_rope(qkv[:, :q_dim + kv_dim].view(-1, c.num_heads + c.num_kv_heads, c.head_dim), cos, sin)
        q, k = qk[:, :c.num_heads], qk[:, c.num_heads:]                                      # [T, Hq|Hkv, D]
        v = qkv[:, q_dim + kv_dim:].view(-1, c.num_kv_heads, c.head_dim)                     # [T, Hkv, D]
        k_cache, v_cache = kv_cache[0], kv_cache[1]                              # [NB, BS, Hkv, D]
        k_cache.view(-1, c.num_kv_heads, c.head_dim).index_copy_(0, attn.slot_mapping, k)
        v_cache.view(-1, c.num_kv_heads, c.head_dim).index_copy_(0, attn.slot_mapping, v)
        out = paged_attention(q, k_cache, v_cache, attn.block_tables, attn.seq_lens,
                              attn.query_start_loc, c.head_dim ** -0.5, attn.device_lens, k, v,
                              attn.invariant).flatten(1)                                    # [T, q]
        y = attn.linear(out, layer.o, layer.o_bias)
        if lora is not None:
            lora.apply(y, out, i, "o_proj")
        return y

    def _mlp(self, i: int, layer: LayerWeights, h: torch.Tensor, attn: AttentionMetadata,
             lora: LoraBatch | None) -> torch.Tensor:
        inter = self.config.intermediate_size
        gate_up = attn.linear(h, layer.gate_up, layer.gate_up_bias)              # [T, 2 I]
        if lora is not None:
            lora.apply(gate_up[:, :inter], h, i, "gate_proj")
            lora.apply(gate_up[:, inter:], h, i, "up_proj")
        act = F.silu(gate_up[:, :inter]).mul_(gate_up[:, inter:])                # [T, I]
        y = attn.linear(act, layer.down, layer.down_bias)
        if lora is not None:
            lora.apply(y, act, i, "down_proj")
        return y

    def label_logits(self, hidden: torch.Tensor, label_ids: torch.Tensor, invariant: bool = False) -> torch.Tensor:
        """hidden: [N, H], label_ids: [N, K] -> [N, K], computing only those rows of the head
        (invariant: over fixed row tiles)."""
        if invariant:
            return tiled.label_logits(hidden, self.lm_head[label_ids])
        return torch.einsum("nh,nkh->nk", hidden, self.lm_head[label_ids])

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: [N, H] -> [N, V]."""
        if isinstance(self.head, Int8Weight):
            return self.head.linear(hidden)
        return hidden @ self.lm_head.t()
