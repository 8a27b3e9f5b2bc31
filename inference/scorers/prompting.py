"""How a prompt reaches a model: plain text, or wrapped in the model's chat template, and which token
stands for each direction label. The settings come with the model (`inference.checkpoints.prompt_settings`:
its manifest); folders without any get plain prompts and the labels " up", " down", " flat".

Chat: the agents' prompt is the user turn (after the model's system turn, when the settings name one)
and the template adds the assistant's turn header, so the next token is the first of the answer: the
label words of chat models carry no leading space.
"""
from __future__ import annotations

import os

from inference.checkpoints import PromptSettings, prompt_settings
from inference.scorers.base import label_token_ids
from schemas import DIRECTIONS

_END_OF_HEAD = "\ue000"   # a private-use character no prompt holds: marks where a head ends in its rendering


class PromptFormat:
    """A tokenizer with a model's prompt settings: `render` a prompt, its `label_ids`."""

    def __init__(self, tokenizer, settings: PromptSettings) -> None:
        if settings.chat and not getattr(tokenizer, "chat_template", None):
            raise ValueError("the model's settings ask for its chat template, but its tokenizer has none")
        self.tokenizer = tokenizer
        self.settings = settings
        self.label_ids = label_token_ids(tokenizer, settings.label_words)

    @classmethod
    def for_model(cls, tokenizer, model_dir: str | os.PathLike) -> "PromptFormat":
        return cls(tokenizer, prompt_settings(model_dir))

    def encode(self, prompt: str) -> list[int]:
        """`prompt` as the model reads it: rendered, then tokenized. The same for training and for every
        scorer; the tokenizer adds no special tokens of its own (a chat template writes its own)."""
        return self.tokenizer.encode(self.render(prompt), add_special_tokens=False)

    def render(self, prompt: str) -> str:
        """The text to encode: `prompt` itself (plain) or the chat up to the assistant's first token."""
        if not self.settings.chat:
            return prompt
        return self._chat([{"role": "user", "content": prompt}]) + self.settings.answer_prefix

    def encode_head(self, head: str) -> list[int]:
        """The tokens `encode` gives every prompt that starts with `head` (a warm-up's known head, cut where
        the tokenizer splits too) before its own: the rendered prompt up to where `head` ends, without what
        the template closes the turn with, so that a cache of them covers the whole head."""
        return self.tokenizer.encode(self.render_head(head), add_special_tokens=False)

    def render_head(self, head: str) -> str:
        """`render(prompt)` up to the end of `head`, for any prompt that starts with `head`."""
        if not self.settings.chat:
            return head
        rendered = self._chat([{"role": "user", "content": head + _END_OF_HEAD}])
        return rendered[:rendered.index(_END_OF_HEAD)]

    def render_follow_up(self, prompt: str, direction: str, question: str) -> str:
        """The text up to the model's reply to `question`, asked after it answered `prompt` with `direction`
        (the label the forecast was read from): plain, the three one after the other; chat, a second user
        turn after the assistant's answer."""
        answer = self.settings.label_words[DIRECTIONS.index(direction)]
        if not self.settings.chat:
            return f"{prompt}{answer}\n\n{question}\n"
        return self._chat([{"role": "user", "content": prompt},
                           {"role": "assistant", "content": self.settings.answer_prefix + answer},
                           {"role": "user", "content": question}])

    def _chat(self, messages: list[dict]) -> str:
        """`messages` after the model's system turn (when its settings name one), in its chat template, up
        to the assistant's next turn."""
        if self.settings.system is not None:
            messages = [{"role": "system", "content": self.settings.system}] + messages
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
