"""Train a LoRA adapter on (prompt, label) pairs with PEFT, on the CPU, and save it with a card.

The objective is the one the scorers use: the next-token distribution after the prompt,
restricted to the first tokens of " up", " down" and " flat" (`hidden @ W[label_ids].T`), with
cross-entropy weighted by inverse class frequency. Only the LoRA matrices train; the base model,
its embeddings and the output head stay frozen, so the adapter loads in both `HFScorer` and the
paged engine. Weights are saved in PEFT format (float16, to keep shipped adapters small) next to
`card.json`. Imports nothing of agents/ or streams/.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.models.qwen2.modeling_qwen2 import apply_rotary_pos_emb

from inference.adapters.cards import CARD_NAME, read_card, write_card  # noqa: F401 (this module's API too)
from inference.checkpoints import model_fingerprint
from inference.scorers.prompting import PromptFormat
from inference.scorers.hf import left_pad
from schemas import DIRECTIONS

WEIGHTS_NAME = "adapter_model.safetensors"
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True, slots=True)
class TrainConfig:
    rank: int = 8
    alpha: float = 16.0
    epochs: int = 3
    learning_rate: float = 3e-3
    batch_size: int = 32
    max_steps: int | None = None        # stop early after this many optimiser steps (tests)
    seed: int = 0
    class_weighting: bool = True
    target_modules: tuple[str, ...] = LORA_TARGETS
    max_prompt_tokens: int = 1024
    bf16_lower: bool = False            # run the frozen lower layers under bfloat16 autocast, cache them in bf16

    def __post_init__(self) -> None:
        for name in ("rank", "epochs", "batch_size", "max_prompt_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1")
        if self.learning_rate <= 0 or self.alpha <= 0:
            raise ValueError("learning_rate and alpha must be > 0")


@dataclass(frozen=True, slots=True)
class TrainStats:
    steps: int
    examples: int
    seconds: float
    first_loss: float
    last_loss: float                    # mean over the last epoch (or the last steps run)
    class_weights: tuple[float, ...]
    losses: tuple[float, ...] = field(default=(), repr=False)


def class_weights(labels: Sequence[str]) -> torch.Tensor:
    """Inverse-frequency weights aligned with DIRECTIONS, scaled to mean 1; absent classes get 0."""
    counts = torch.tensor([sum(1 for y in labels if y == label) for label in DIRECTIONS], dtype=torch.float32)
    weights = torch.where(counts > 0, counts.sum() / (len(DIRECTIONS) * counts.clamp(min=1)), torch.zeros(()))
    return weights / weights[counts > 0].mean()


class LabelHeadTrainer:
    """A causal LM with a LoRA on its last decoder layer, trained through the label rows of its head.

    Only the last layer is adapted, so the input to that layer is computed once per prompt with
    the frozen lower layers (`cache_inputs`), and each step runs the last layer at the last
    position only: keys and values over the whole prompt, query, attention output and MLP for
    the final token. That is the same function the full forward computes there (tested), at a
    small fraction of the cost, which keeps CPU training to minutes.
    """

    def __init__(self, model_dir: str | Path, cfg: TrainConfig, init_from: str | Path | None = None) -> None:
        """`init_from`: a saved adapter of this trainer to start from (its rank and targets win)."""
        torch.manual_seed(cfg.seed)
        self.cfg = cfg
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        base = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True, dtype=torch.float32)
        self.model: PeftModel = (PeftModel.from_pretrained(base, str(init_from), is_trainable=True)
                                 if init_from else get_peft_model(base, self._lora_config(base)))
        self.decoder = base.model
        head = base.get_output_embeddings().weight                                       # [V, H]
        self.prompt_format = PromptFormat.for_model(self.tokenizer, model_dir)
        self.label_rows = head[self.prompt_format.label_ids].detach().clone()  # [L, H]
        self.pad_id = self.tokenizer.pad_token_id or self.tokenizer.eos_token_id or 0

    def _lora_config(self, base: torch.nn.Module) -> LoraConfig:
        last = base.config.num_hidden_layers - 1
        return LoraConfig(r=self.cfg.rank, lora_alpha=self.cfg.alpha, lora_dropout=0.0, bias="none",
                          target_modules=list(self.cfg.target_modules), layers_to_transform=[last],
                          task_type="CAUSAL_LM")

    def encode(self, prompts: Sequence[str]) -> list[list[int]]:
        cut = self.cfg.max_prompt_tokens
        return [self.prompt_format.encode(p)[-cut:] for p in prompts]

    @torch.no_grad()
    def cache_inputs(self, prompts: Sequence[str], batch_size: int = 32) -> list[torch.Tensor]:
        """Per prompt, the input of the last decoder layer: [T_i, H] (the lower layers are frozen).

        Prompts run in batches of similar length (less padding); with `bf16_lower` the lower layers
        run under bfloat16 autocast and the inputs are kept in bfloat16 (the last layer trains in float32).
        """
        tokens = self.encode(prompts)
        order = sorted(range(len(tokens)), key=lambda i: len(tokens[i]))
        cached: list[torch.Tensor | None] = [None] * len(tokens)
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            input_ids, attention_mask = left_pad([tokens[i] for i in rows], self.pad_id)   # [B, T]
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.cfg.bf16_lower):
                hidden = self.decoder(input_ids=input_ids, attention_mask=attention_mask,
                                      position_ids=_positions(attention_mask), use_cache=False,
                                      output_hidden_states=True).hidden_states[-2]  # [B, T, H]
            for row, at in enumerate(rows):
                cached[at] = hidden[row, -len(tokens[at]):].clone()
        return cached  # type: ignore[return-value]

    def label_logits(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        """Logits over DIRECTIONS at the last position, from cached last-layer inputs: [B, L]."""
        hidden, mask = _left_pad_states(inputs)                                 # [B, T, H], [B, T]
        hidden = hidden.float()
        layer, attn = self.decoder.layers[-1], self.decoder.layers[-1].self_attn
        batch, length, _ = hidden.shape
        normed = layer.input_layernorm(hidden)                                  # [B, T, H]
        cos, sin = self.decoder.rotary_emb(normed, _positions(mask))            # [B, T, D]
        keys = attn.k_proj(normed).view(batch, length, -1, attn.head_dim).transpose(1, 2)    # [B, KV, T, D]
        values = attn.v_proj(normed).view(batch, length, -1, attn.head_dim).transpose(1, 2)  # [B, KV, T, D]
        query = attn.q_proj(normed[:, -1:]).view(batch, 1, -1, attn.head_dim).transpose(1, 2)  # [B, Q, 1, D]
        query = apply_rotary_pos_emb(query, query, cos[:, -1:], sin[:, -1:])[0]
        keys = apply_rotary_pos_emb(keys, keys, cos, sin)[0]
        group = query.shape[1] // keys.shape[1]
        attended = torch.nn.functional.scaled_dot_product_attention(
            query, keys.repeat_interleave(group, 1), values.repeat_interleave(group, 1),
            attn_mask=mask[:, None, None, :], scale=attn.scaling)              # [B, Q, 1, D]
        last = hidden[:, -1] + attn.o_proj(attended.transpose(1, 2).reshape(batch, -1))  # [B, H]
        last = last + layer.mlp(layer.post_attention_layernorm(last))
        return self.decoder.norm(last) @ self.label_rows.T                     # [B, L]

    def fit(self, inputs: Sequence[torch.Tensor], labels: Sequence[str]) -> TrainStats:
        """Train on cached last-layer inputs (`cache_inputs`) and their labels."""
        targets = torch.tensor([DIRECTIONS.index(y) for y in labels])          # [N]
        weights = class_weights(labels) if self.cfg.class_weighting else torch.ones(len(DIRECTIONS))
        return self._train(inputs, lambda logits, batch: torch.nn.functional.cross_entropy(
            logits, targets[batch], weight=weights), weights)

    def fit_soft(self, inputs: Sequence[torch.Tensor], teacher: torch.Tensor) -> TrainStats:
        """Distil: match a teacher's label distributions [N, L] on these inputs, KL(teacher || student)."""
        teacher = teacher.clamp_min(1e-9)                                        # [N, L]
        return self._train(inputs, lambda logits, batch: torch.nn.functional.kl_div(
            logits.log_softmax(-1), teacher[batch], reduction="batchmean"), torch.ones(len(DIRECTIONS)))

    def _train(self, inputs: Sequence[torch.Tensor], loss_of, weights: torch.Tensor) -> TrainStats:
        """AdamW with a linear decay over the LoRA parameters; `loss_of(logits [B, L], batch rows [B])`."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimiser = torch.optim.AdamW(params, lr=self.cfg.learning_rate, weight_decay=0.0)
        schedule = self._steps(len(inputs))
        lr_at = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda s: 1.0 - s / max(1, schedule))
        started, losses = time.perf_counter(), []
        self.model.train()
        for batch in self._batches(len(inputs), schedule):
            loss = loss_of(self.label_logits([inputs[i] for i in batch]), batch)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            lr_at.step()
            losses.append(loss.item())
        self.model.eval()
        return self._stats(losses, len(inputs), time.perf_counter() - started, weights)

    def _steps(self, examples: int) -> int:
        per_epoch = math.ceil(examples / self.cfg.batch_size)
        total = per_epoch * self.cfg.epochs
        return min(total, self.cfg.max_steps) if self.cfg.max_steps else total

    def _batches(self, examples: int, steps: int) -> Iterator[torch.Tensor]:
        generator = torch.Generator().manual_seed(self.cfg.seed)
        done = 0
        while done < steps:
            order = torch.randperm(examples, generator=generator)
            for start in range(0, examples, self.cfg.batch_size):
                if done == steps:
                    return
                yield order[start:start + self.cfg.batch_size]
                done += 1

    def _stats(self, losses: list[float], examples: int, seconds: float, weights: torch.Tensor) -> TrainStats:
        per_epoch = max(1, math.ceil(examples / self.cfg.batch_size))
        tail = losses[-per_epoch:] or [float("nan")]
        return TrainStats(len(losses), examples, round(seconds, 2), losses[0] if losses else float("nan"),
                          sum(tail) / len(tail), tuple(round(float(w), 4) for w in weights), tuple(losses))

    @torch.inference_mode()
    def predict(self, inputs: Sequence[torch.Tensor], batch_size: int = 128) -> list[tuple[float, ...]]:
        """Label probabilities for cached inputs: what the scorers compute with this adapter."""
        out: list[tuple[float, ...]] = []
        for start in range(0, len(inputs), batch_size):
            probs = self.label_logits(inputs[start:start + batch_size]).softmax(-1)  # [B, L]
            out += [tuple(row) for row in probs.tolist()]
        return out

    def save(self, out_dir: str | Path) -> Path:
        """PEFT folder (adapter_config.json + float16 adapter_model.safetensors)."""
        out = Path(out_dir)
        self.model.save_pretrained(out)
        (out / "README.md").unlink(missing_ok=True)  # PEFT's empty model-card template; card.json is ours
        tensors = load_file(str(out / WEIGHTS_NAME))
        save_file({k: v.to(torch.float16).contiguous() for k, v in tensors.items()}, str(out / WEIGHTS_NAME),
                  metadata={"format": "pt"})
        return out


class InputCache:
    """Last-layer inputs by prompt, shared by the trainers of one base model: the adapters change only the
    last layer, so what the frozen layers below it compute is the same for every adapter; each prompt runs
    through them once however many adapters train or are evaluated on it."""

    def __init__(self) -> None:
        self._by_prompt: dict[str, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self._by_prompt)

    def inputs(self, trainer: LabelHeadTrainer, prompts: Sequence[str]) -> list[torch.Tensor]:
        missing = list(dict.fromkeys(p for p in prompts if p not in self._by_prompt))
        if missing:
            self._by_prompt.update(zip(missing, trainer.cache_inputs(missing)))
        return [self._by_prompt[p] for p in prompts]


def _positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids of left-padded rows: 0 at each row's first real token. [B, T]"""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def _left_pad_states(states: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-align [T_i, H] tensors: ([B, T_max, H], bool mask [B, T_max])."""
    length = max(s.shape[0] for s in states)
    hidden = states[0].new_zeros(len(states), length, states[0].shape[1])
    mask = torch.zeros(len(states), length, dtype=torch.bool)
    for row, state in enumerate(states):
        hidden[row, length - state.shape[0]:] = state
        mask[row, length - state.shape[0]:] = True
    return hidden, mask


def train_adapter(model_dir: str | Path, prompts: Sequence[str], labels: Sequence[str], out_dir: str | Path,
                  cfg: TrainConfig = TrainConfig()) -> tuple[LabelHeadTrainer, TrainStats]:
    """Train and save; the caller writes the card (it knows the data and the evaluation)."""
    if len(prompts) != len(labels) or not prompts:
        raise ValueError("need as many labels as prompts, and at least one")
    unknown = set(labels) - set(DIRECTIONS)
    if unknown:
        raise ValueError(f"labels {sorted(unknown)} are not in {DIRECTIONS}")
    trainer = LabelHeadTrainer(model_dir, cfg)
    stats = trainer.fit(trainer.cache_inputs(prompts), labels)
    trainer.save(out_dir)
    return trainer, stats


def base_card(model_dir: str | Path, cfg: TrainConfig, stats: TrainStats) -> dict:
    """The part of a card this module knows: base model, LoRA settings, training run."""
    stats_dict = {k: v for k, v in asdict(stats).items() if k != "losses"}
    return {"base_model": Path(model_dir).resolve().name, "base_model_hash": model_fingerprint(model_dir),
            "rank": cfg.rank, "alpha": cfg.alpha, "target_modules": list(cfg.target_modules),
            "train_config": {k: v for k, v in asdict(cfg).items() if k not in ("rank", "alpha", "target_modules")},
            "training": stats_dict, "labels": list(DIRECTIONS)}
