"""Hugging Face transformers + PEFT reference outputs, one request at a time."""
import contextlib

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM


class HFReference:
    def __init__(self, model_dir: str, adapters: dict[str, str]) -> None:
        base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        names = list(adapters)
        self.model = PeftModel.from_pretrained(base, adapters[names[0]], adapter_name=names[0]).eval()
        for name in names[1:]:
            self.model.load_adapter(adapters[name], adapter_name=name)

    def _adapter(self, adapter: str | None):
        if adapter is None:
            return self.model.disable_adapter()
        self.model.set_adapter(adapter)
        return contextlib.nullcontext()

    @torch.no_grad()
    def last_logits(self, token_ids: list[int], adapter: str | None) -> torch.Tensor:
        with self._adapter(adapter):
            return self.model(input_ids=torch.tensor([token_ids])).logits[0, -1]     # [V]

    def greedy(self, token_ids: list[int], adapter: str | None, max_new_tokens: int,
               stop_token_ids: set[int] = frozenset()) -> list[int]:
        out: list[int] = []
        for _ in range(max_new_tokens):
            token = int(self.last_logits(token_ids + out, adapter).argmax())
            out.append(token)
            if token in stop_token_ids:
                break
        return out
