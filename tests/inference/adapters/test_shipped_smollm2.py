"""The adapters shipped for SmolLM2-135M-Instruct (inference/data/adapters/smollm2-135m): their cards name the
converted model's fingerprint and their fitted fusion weights, and the engine scores with one what transformers +
PEFT score, and what the trainer's last-layer path computed. Skipped where the model is not converted in the cache
(`finllm model convert smollm2-135m`): no test here converts it."""
from __future__ import annotations

import json

import pytest
import torch

from inference.adapters.shipped import SHIPPED_DIR, load_routing
from inference.checkpoints import model_fingerprint, model_spec
from inference.checkpoints.store import has_manifest
from inference.fusion import AdapterFusion
from inference.scorers.base import ScoreItem

SMOL_DIR = SHIPPED_DIR / "smollm2-135m"
MODEL_DIR = model_spec("smollm2-135m").path
PROMPTS = (
    "Forecast for NOVA.\nNews:\n- 2026-01-05 14:30:26 [newswire] Nova Biotech loses key customer Bolt Dynamics\n"
    "Now 2026-01-05 14:30:26. News weights: 1.00.\nLatest news just now; price since then about flat.\n"
    "Market: ret1 +3.3bp ret5 +3.3bp vol 7.2bp/min spread 3.6bp trades 43.\n"
    "Direction over the next 60s (up, down or flat):",
    "Forecast for ACME.\nNews:\n- 2026-01-05 14:31:02 [filings] Acme Corp beats estimates, raises outlook\n"
    "Now 2026-01-05 14:31:05. News weights: 1.00.\nLatest news 3s ago; price since then up 2.1bp.\n"
    "Market: ret1 +1.0bp ret5 -0.4bp vol 5.1bp/min spread 2.9bp trades 37.\n"
    "Direction over the next 60s (up, down or flat):",
)

pytestmark = pytest.mark.skipif(not has_manifest(MODEL_DIR) or not (SMOL_DIR / "routing.json").is_file(),
                                reason="SmolLM2 is not converted in the cache, or its adapters are not shipped here")


def test_cards_name_the_converted_model_and_their_fusion():
    served = model_fingerprint(MODEL_DIR)
    routing = load_routing(SMOL_DIR)
    assert len(routing.adapters) == 10 and set(routing.routes.values()) <= set(routing.adapters)
    total = 0
    for name, folder in routing.adapters.items():
        card = json.loads((folder / "card.json").read_text())
        assert card["base_model_hash"] == served and card["base_model"] == MODEL_DIR.name, name
        AdapterFusion.from_json(card["fusion"])
        total += (folder / "adapter_model.safetensors").stat().st_size
        assert card["build"]["weights_bytes"] == (folder / "adapter_model.safetensors").stat().st_size
    assert total < 15e6


def test_the_engine_scores_a_shipped_adapter_as_peft_and_the_trainer_do():
    from inference.adapters.train import LabelHeadTrainer, TrainConfig
    from inference.scorers.factory import build_scorer

    name = "direction-all"
    adapters = {name: str(SMOL_DIR / name)}
    items = [ScoreItem(str(i), p, name) for i, p in enumerate(PROMPTS)]
    engine = build_scorer("paged", MODEL_DIR, adapters=adapters, dtype="float32", device="cpu")
    try:
        ours = torch.tensor([r.probs for r in engine.score(items)])
        base = torch.tensor([r.probs for r in engine.score([ScoreItem("b", PROMPTS[0])])])
    finally:
        engine.close()
    peft = build_scorer("hf", MODEL_DIR, adapters=adapters, device="cpu")
    try:
        theirs = torch.tensor([r.probs for r in peft.score(items)])
    finally:
        peft.close()
    assert (ours - theirs).abs().max() < 1e-4
    assert (base - ours[:1]).abs().max() > 1e-3      # the adapter changes the answer
    trainer = LabelHeadTrainer(MODEL_DIR, TrainConfig(), init_from=SMOL_DIR / name)
    trained = torch.tensor(trainer.predict(trainer.cache_inputs(list(PROMPTS))))
    assert (trained - theirs).abs().max() < 1e-3
