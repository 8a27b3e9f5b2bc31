"""A model cut to its first layers (the base tier's student): the same function as the parent's first
layers followed by its final norm and head, written as an ordinary folder with a manifest."""
from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from inference.adapters.shipped import ROUTING_NAME, base_tier_env, shipped_routing
from inference.checkpoints import (BASE_TIER_MODEL, DEFAULT_MODEL, base_tier_model, model_fingerprint, read_manifest,
                                   resolve_model_dir)
from inference.checkpoints.store import verify_model, write_into
from inference.checkpoints.truncate import truncate_model
from streams.settings import ROUTING_FILE_ENV


def test_a_cut_model_computes_its_parents_first_layers_then_the_head(tmp_path):
    parent_dir = resolve_model_dir("tiny")
    cut_dir = write_into(tmp_path / "cut", lambda staging: truncate_model(parent_dir, 1, staging, {"model": "t"}))
    verify_model(cut_dir)
    manifest = read_manifest(cut_dir)
    assert manifest["layers"] == 1 and manifest["parent_fingerprint"] == model_fingerprint(parent_dir)
    parent = AutoModelForCausalLM.from_pretrained(parent_dir, local_files_only=True, dtype=torch.float32).eval()
    cut = AutoModelForCausalLM.from_pretrained(cut_dir, local_files_only=True, dtype=torch.float32).eval()
    assert parent.config.num_hidden_layers == 2 and cut.config.num_hidden_layers == 1
    ids = torch.tensor([[5, 17, 42, 9, 3, 11]])
    with torch.no_grad():
        hidden = parent.model(input_ids=ids, output_hidden_states=True).hidden_states[1]   # after layer 0
        expected = parent.lm_head(parent.model.norm(hidden))
        got = cut(input_ids=ids).logits
        whole = parent(input_ids=ids).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got, whole, atol=1e-3)        # the cut is not the parent


def test_a_cut_keeps_fewer_layers_than_its_parent(tmp_path):
    with pytest.raises(ValueError, match="cannot keep"):
        truncate_model(resolve_model_dir("tiny"), 2, tmp_path / "x", {})


def test_the_default_model_names_its_student_which_ships_distilled_adapters():
    assert base_tier_model(None) == base_tier_model(DEFAULT_MODEL) == BASE_TIER_MODEL
    assert base_tier_model("tiny") is None and base_tier_model(BASE_TIER_MODEL) is None
    student, served = shipped_routing(BASE_TIER_MODEL), shipped_routing(DEFAULT_MODEL)
    assert set(student.routes.values()) <= set(student.adapters)
    # every adapter the agents route to (by the served model's routing) is one the student serves
    assert set(served.routes.values()) | {served.default} <= set(student.adapters)
    for folder in student.adapters.values():
        card = json.loads((folder / "card.json").read_text())
        assert card["tier"] == "base" and card["distill"]["n"] > 0 and card["fusion"]["news"]


def test_the_base_tier_serves_the_student_only_with_the_shipped_adapters(tmp_path):
    shipped = str(shipped_routing(DEFAULT_MODEL).file)
    student = base_tier_env({ROUTING_FILE_ENV: shipped})
    assert student["FINLLM_MODEL"] == BASE_TIER_MODEL
    assert student[ROUTING_FILE_ENV] == str(shipped_routing(BASE_TIER_MODEL).file)
    assert base_tier_env({ROUTING_FILE_ENV: shipped, "FINLLM_MODEL": DEFAULT_MODEL})["FINLLM_MODEL"] == BASE_TIER_MODEL
    # adapters of one's own, no adapters, or `same`: the served model
    own = tmp_path / ROUTING_NAME
    own.write_text(open(shipped).read())
    for env in ({ROUTING_FILE_ENV: str(own)}, {}, {ROUTING_FILE_ENV: shipped, "FINLLM_ADAPTER_PATHS": "a=/x"},
                {ROUTING_FILE_ENV: shipped, "FINLLM_BASE_MODEL": "same"},
                {ROUTING_FILE_ENV: shipped, "FINLLM_HTTP_PORT": "8000"}):      # the HTTP API: the whole model
        assert base_tier_env(env) == env
    # a model without a student
    tiny = {ROUTING_FILE_ENV: str(shipped_routing("tiny").file), "FINLLM_MODEL": "tiny"}
    assert base_tier_env(tiny) == tiny
    # named outright
    named = base_tier_env({"FINLLM_BASE_MODEL": "tiny", "FINLLM_MODEL": DEFAULT_MODEL})
    assert named["FINLLM_MODEL"] == "tiny" and named[ROUTING_FILE_ENV] == str(shipped_routing("tiny").file)
