"""An adapter folder's `card.json`: what it was trained on (base model fingerprint, data, metrics) and the
fusion weights fitted on its held-out part. Plain JSON, no torch: the worker's fusion policy, the adapter
registry and the trainer all read cards through here."""
from __future__ import annotations

import json
from pathlib import Path

CARD_NAME = "card.json"


def write_card(out_dir: str | Path, card: dict) -> Path:
    path = Path(out_dir) / CARD_NAME
    path.write_text(json.dumps(card, indent=2, sort_keys=True, default=str) + "\n")
    return path


def read_card(adapter_dir: str | Path) -> dict:
    """The adapter's card, or {} when it has none (an adapter trained elsewhere)."""
    path = Path(adapter_dir) / CARD_NAME
    return json.loads(path.read_text()) if path.is_file() else {}
