"""Prompt formats: the tiny model's prompts go in as they are (its forecasts must not move); settings
travel in the manifest; a folder without one gets plain prompts."""
from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from inference.checkpoints import DEFAULT_MODEL, MODELS, PromptSettings, prompt_settings, resolve_model_dir
from inference.checkpoints.store import write_manifest
from inference.scorers.base import label_token_ids
from inference.scorers.prompting import PromptFormat

PROMPT = "Forecast for ACME.\nNews:\n- none\nDirection over the next 60s (up, down or flat):"


def test_plain_prompts_are_left_as_they_are(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir, local_files_only=True)
    prompt_format = PromptFormat.for_model(tokenizer, tiny_model_dir)
    assert prompt_format.settings == PromptSettings() == MODELS["tiny"].prompt
    assert prompt_format.render(PROMPT) == PROMPT
    assert prompt_format.label_ids == [tokenizer.encode(w, add_special_tokens=False)[0] for w in (" up", " down", " flat")]


def test_settings_travel_in_the_manifest(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"weights")
    settings = PromptSettings(chat=True, system="Be brief.", label_words=("A", "B", "C"), answer_prefix="X:")
    write_manifest(tmp_path, {"prompt": settings.to_json()})
    assert prompt_settings(tmp_path) == settings
    assert prompt_settings(tmp_path / "elsewhere") == PromptSettings()


def test_a_chat_format_wraps_the_prompt_in_the_template(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir, local_files_only=True)
    chat = PromptFormat(tokenizer, PromptSettings(chat=True, answer_prefix="Direction:"))
    assert chat.render(PROMPT) == f"<|im_start|>user\n{PROMPT}<|im_end|>\n<|im_start|>assistant\nDirection:"


def test_label_words_must_match_the_labels_and_differ(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir, local_files_only=True)
    with pytest.raises(ValueError, match="do not match"):
        label_token_ids(tokenizer, (" up", " down"))
    with pytest.raises(ValueError, match="share first tokens"):
        label_token_ids(tokenizer, (" up", " up", " flat"))


def test_the_tiny_name_is_the_tiny_folder_and_the_default_is_the_real_model(tmp_path, monkeypatch):
    monkeypatch.setenv("FINLLM_CACHE_DIR", str(tmp_path))
    assert resolve_model_dir("tiny") == tmp_path / "models" / MODELS["tiny"].folder
    assert DEFAULT_MODEL == "smollm2-135m" and MODELS[DEFAULT_MODEL].source is not None


def test_a_follow_up_question_comes_after_the_forecasts_answer(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir, local_files_only=True)
    plain = PromptFormat.for_model(tokenizer, tiny_model_dir)
    assert plain.render_follow_up(PROMPT, "down", "Why?") == f"{PROMPT} down\n\nWhy?\n"
    chat = PromptFormat(tokenizer, PromptSettings(chat=True, system="Be brief.", answer_prefix="Direction:"))
    assert chat.render_follow_up(PROMPT, "up", "Why?") == (
        f"<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n{PROMPT}<|im_end|>\n"
        "<|im_start|>assistant\nDirection: up<|im_end|>\n<|im_start|>user\nWhy?<|im_end|>\n<|im_start|>assistant\n")


def test_a_head_renders_as_the_start_of_every_prompt_it_heads(tiny_model_dir):
    """A warm-up's head, cut before a space, is prefilled as exactly the tokens its prompts start with: in
    a chat template, without the end of turn the template would close it with."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir, local_files_only=True)
    head = PROMPT[:PROMPT.index(" the next")]
    for settings in (PromptSettings(), PromptSettings(chat=True, system="Be brief.", answer_prefix="Direction:")):
        prompt_format = PromptFormat(tokenizer, settings)
        assert prompt_format.render(PROMPT).startswith(prompt_format.render_head(head))
        assert prompt_format.render_head(head).endswith("Direction over")
        head_ids = prompt_format.encode_head(head)
        assert prompt_format.encode(PROMPT)[:len(head_ids)] == head_ids
