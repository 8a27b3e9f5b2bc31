"""`finllm adapters merge`: the merged checkpoint computes what the base with the adapter computes."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from inference.adapters.merge import MergeError, merge_adapter
from inference.checkpoints import model_fingerprint, read_manifest, verify_model
from inference.engine.config import EngineConfig
from inference.scorers.engine import EngineScorer

PROMPT = "ACME raises full-year guidance after record quarter; direction over the next minute:"
TOLERANCE = 1e-4


def hf_logits(model_dir, adapter_dir=None) -> torch.Tensor:
    """transformers' next-token logits over the whole vocabulary, float32, optionally through PEFT."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True, dtype=torch.float32)
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, adapter_dir, local_files_only=True)
    ids = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)(PROMPT, return_tensors="pt").input_ids
    with torch.inference_mode():
        return model.eval()(input_ids=ids).logits[0, -1].double()


def engine_logits(model_dir, vocab: int) -> torch.Tensor:
    scorer = EngineScorer(str(model_dir), config=EngineConfig(dtype="float32", num_blocks=32,
                                                              enable_prefix_caching=False))
    try:
        return torch.tensor(scorer.next_token_logits(PROMPT, list(range(vocab))), dtype=torch.float64)
    finally:
        scorer.close()


@pytest.fixture(scope="module")
def merged(tiny_model_dir, lora_dirs, tmp_path_factory):
    return merge_adapter(tiny_model_dir, lora_dirs["alpha"], tmp_path_factory.mktemp("merged") / "alpha")


def test_merged_checkpoint_matches_the_unmerged_adapter_in_transformers_and_the_engine(
        merged, tiny_model_dir, lora_dirs):
    with_adapter, base = hf_logits(tiny_model_dir, lora_dirs["alpha"]), hf_logits(tiny_model_dir)
    assert (with_adapter - base).abs().max() > 100 * TOLERANCE          # the adapter does change the model
    assert (hf_logits(merged) - with_adapter).abs().max() < TOLERANCE
    assert (engine_logits(merged, len(with_adapter)) - with_adapter).abs().max() < TOLERANCE


def test_merged_folder_has_a_manifest_naming_its_sources(merged, tiny_model_dir, lora_dirs):
    verify_model(merged)
    manifest = read_manifest(merged)
    assert manifest["fingerprint"] == model_fingerprint(merged) != model_fingerprint(tiny_model_dir)
    assert manifest["merged_from"]["base_fingerprint"] == model_fingerprint(tiny_model_dir)
    assert manifest["merged_from"]["adapter"] == str(lora_dirs["alpha"].resolve())
    assert (merged / "tokenizer.json").is_file() and not (merged / "adapter_config.json").exists()


def test_an_adapter_of_another_base_is_refused(tiny_model_dir, lora_dirs, tmp_path):
    adapter = shutil.copytree(lora_dirs["beta"], tmp_path / "beta")
    (adapter / "card.json").write_text(json.dumps({"base_model_hash": "0123456789abcdef"}))
    with pytest.raises(MergeError, match="trained on base 0123456789abcdef"):
        merge_adapter(tiny_model_dir, adapter, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_the_command_merges_a_shipped_adapter_into_the_default_model(tmp_path):
    out = tmp_path / "merged"
    done = subprocess.run([sys.executable, "-m", "agents.cli", "adapters", "merge", "direction-all", "--out",
                           str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == str(out.resolve())
    assert read_manifest(out)["merged_from"]["adapter"].endswith("direction-all")
    again = subprocess.run([sys.executable, "-m", "agents.cli", "adapters", "merge", "direction-all", "--out",
                            str(out)], capture_output=True, text=True, timeout=300)
    assert again.returncode != 0 and "not empty" in again.stderr
