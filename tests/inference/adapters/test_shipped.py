"""The shipped adapters belong to the embedded default model as this machine builds it."""
import json

from inference.adapters.shipped import SHIPPED_DIR, load_routing
from inference.checkpoints import model_fingerprint, resolve_model_dir


def test_shipped_adapters_were_trained_on_the_default_model_built_here():
    """The default model's weights come from a platform-independent generator; if they did not, a
    machine with another CPU would build another model and refuse every shipped adapter."""
    served = model_fingerprint(resolve_model_dir(None))
    routing = load_routing(SHIPPED_DIR)
    assert len(routing.adapters) >= 4
    for name, folder in routing.adapters.items():
        card = json.loads((folder / "card.json").read_text())
        assert card["base_model_hash"] == served, name
    assert set(routing.routes.values()) <= set(routing.adapters)
