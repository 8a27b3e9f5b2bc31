from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from inference import checkpoints
from inference.checkpoints.store import sha256_file
from inference.checkpoints import (
    MANIFEST_NAME,
    SINGLE_TOKEN_WORDS,
    ModelBuildError,
    build_model,
    tiny_model_dir,
    ensure_model,
    model_fingerprint,
    read_manifest,
    train_tokenizer,
    verify_model,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
SAMPLE_TEXTS = [
    "The stock rose 12345 up, down!  flat\n\nrally's  upgrade",
    "Hello WORLD 3.14 éü 中文 e\u0301",
    "<|im_start|>user\nwill it go up?<|im_end|>",
]


def test_tokenizer_is_deterministic(tiny_corpus):
    first = train_tokenizer(tiny_corpus, vocab_size=512)
    second = train_tokenizer(tiny_corpus, vocab_size=512)
    assert first.backend_tokenizer.to_str() == second.backend_tokenizer.to_str()


@pytest.mark.parametrize("word", SINGLE_TOKEN_WORDS)
def test_labels_are_single_tokens_even_if_unseen(tiny_corpus, word):
    assert not any(" up " in text for text in tiny_corpus)
    tokenizer = train_tokenizer(tiny_corpus, vocab_size=512)
    token_ids = tokenizer.encode(word, add_special_tokens=False)
    assert len(token_ids) == 1
    assert tokenizer.decode(token_ids) == word


def test_special_tokens(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir, local_files_only=True)
    assert tokenizer.eos_token == tokenizer.pad_token == "<|endoftext|>"
    for special in ("<|endoftext|>", "<|im_start|>", "<|im_end|>"):
        assert len(tokenizer.encode(special, add_special_tokens=False)) == 1


def test_loaded_tokenizer_encodes_like_the_trained_one(tiny_corpus, tiny_model_dir):
    trained = train_tokenizer(tiny_corpus)
    loaded = AutoTokenizer.from_pretrained(tiny_model_dir, local_files_only=True)
    for text in SAMPLE_TEXTS + tiny_corpus[:20]:
        assert loaded.encode(text, add_special_tokens=False) == trained.encode(
            text, add_special_tokens=False
        )


def test_built_model_loads_and_matches_manifest(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir, local_files_only=True)
    manifest = read_manifest(tiny_model_dir)
    assert manifest["weights_sha256"] == sha256_file(tiny_model_dir / "model.safetensors")
    assert manifest["seed"] == 0 and manifest["recipe_version"] == checkpoints.RECIPE_VERSION
    assert model.config.model_type == "qwen2"
    assert model.config.vocab_size == len(tokenizer)
    assert model.config.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    saved = load_file(tiny_model_dir / "model.safetensors")
    assert set(saved) == {k for k in model.state_dict() if k != "lm_head.weight"}
    verify_model(tiny_model_dir)


def test_build_leaves_no_staging_folder(tiny_model_dir):
    assert [p.name for p in tiny_model_dir.parent.iterdir()] == [tiny_model_dir.name]


def test_same_seed_same_fingerprint_other_seed_differs(tmp_path, tiny_corpus, tiny_model_dir):
    again = build_model(tmp_path / "again", tiny_corpus, seed=0)
    other = build_model(tmp_path / "other", tiny_corpus, seed=1)
    assert model_fingerprint(again) == model_fingerprint(tiny_model_dir)
    assert len(model_fingerprint(again)) == 16
    assert model_fingerprint(other) != model_fingerprint(tiny_model_dir)


def test_tampered_weights_fail_verification(tmp_path, tiny_corpus):
    model_dir = build_model(tmp_path / "m", tiny_corpus, num_layers=1)
    weights = model_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x00")
    with pytest.raises(ModelBuildError, match="sha256"):
        verify_model(model_dir)


def test_build_refuses_a_foreign_folder(tmp_path, tiny_corpus):
    foreign = tmp_path / "m"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("not a model")
    with pytest.raises(ModelBuildError, match="no finllm_model.json"):
        build_model(foreign, tiny_corpus, num_layers=1)
    assert (foreign / "notes.txt").read_text() == "not a model"


def test_ensure_model_does_not_rebuild(tiny_model_dir):
    def must_not_run():
        raise AssertionError("texts_fn called for an existing model")

    assert ensure_model(tiny_model_dir, must_not_run) == tiny_model_dir


def test_default_model_dir_follows_cache_env(monkeypatch, tmp_path):
    monkeypatch.setenv("FINLLM_CACHE_DIR", str(tmp_path))
    assert tiny_model_dir() == tmp_path / "models" / f"tiny-qwen2-v{checkpoints.RECIPE_VERSION}"
    monkeypatch.delenv("FINLLM_CACHE_DIR")
    assert tiny_model_dir() == Path.home() / ".cache" / "finllm" / "models" / f"tiny-qwen2-v{checkpoints.RECIPE_VERSION}"


def test_default_corpus_is_deterministic():
    assert checkpoints.default_corpus() == checkpoints.default_corpus()


_CONCURRENT_BUILDER = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    from transformers import AutoModelForCausalLM
    from inference.checkpoints import ensure_model

    out_dir, calls_log, ready_dir, me = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), sys.argv[4]
    (ready_dir / me).touch()
    while len(list(ready_dir.iterdir())) < 2:  # start both builders together
        time.sleep(0.01)

    def texts():
        with open(calls_log, "a") as log:
            log.write(me + "\\n")
        time.sleep(0.5)  # widen the window in which the other process could also build
        return ["shares rose after earnings", "the index fell on rate fears"] * 50

    model_dir = ensure_model(out_dir, texts, num_layers=1, hidden_size=64)
    AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True)
    print("loaded")
    """
)


def test_concurrent_ensure_model_builds_once(tmp_path):
    out_dir, calls_log, ready_dir = tmp_path / "cache" / "m", tmp_path / "calls.log", tmp_path / "ready"
    ready_dir.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CONCURRENT_BUILDER, str(out_dir), str(calls_log), str(ready_dir), name],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for name in ("a", "b")
    ]
    outputs = [proc.communicate(timeout=120) for proc in procs]
    for proc, (stdout, stderr) in zip(procs, outputs):
        assert proc.returncode == 0, stderr
        assert "loaded" in stdout
    assert len(calls_log.read_text().split()) == 1
    assert json.loads((out_dir / MANIFEST_NAME).read_text())["shape"]["hidden_size"] == 64
