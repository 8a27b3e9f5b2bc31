"""The adapters shipped with the embedded default model, and how the pipeline routes symbols to them.

`inference/data/adapters/routing.json` lists the adapter folders (name -> folder beside it), the
sector of every synthetic ticker, and the route of each symbol to its sector's adapter for the
served task, plus a default adapter for symbols without a sector. `Routing.env()` is the
environment the two workers read: FINLLM_ADAPTER_PATHS (inference worker: what to load) and
FINLLM_ADAPTERS / FINLLM_DEFAULT_ADAPTER (agents: `AgentsConfig.adapters`, which adapter each
symbol's requests name).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

SHIPPED_DIR = Path(__file__).resolve().parents[1] / "data" / "adapters"
ROUTING_NAME = "routing.json"


@dataclass(frozen=True, slots=True)
class Routing:
    adapters: dict[str, Path]            # name -> PEFT folder
    routes: dict[str, str]               # symbol -> adapter name
    default: str | None                  # adapter for symbols without a route
    sectors: dict[str, tuple[str, ...]]  # sector -> symbols
    task: str = "direction"

    def adapter_for(self, symbol: str) -> str | None:
        return self.routes.get(symbol, self.default)

    def env(self) -> dict[str, str]:
        env = {"FINLLM_ADAPTER_PATHS": ",".join(f"{n}={p}" for n, p in sorted(self.adapters.items())),
               "FINLLM_ADAPTERS": ",".join(f"{s}:{n}" for s, n in sorted(self.routes.items()))}
        if self.default:
            env["FINLLM_DEFAULT_ADAPTER"] = self.default
        return env

    def to_json(self, folder: Path) -> dict:
        return {"task": self.task, "default": self.default, "routes": self.routes,
                "sectors": {k: list(v) for k, v in self.sectors.items()},
                "adapters": {n: str(p.relative_to(folder)) if p.is_relative_to(folder) else str(p)
                             for n, p in sorted(self.adapters.items())}}


def load_routing(folder: str | Path = SHIPPED_DIR) -> Routing:
    """Read `routing.json` of an adapters folder; adapter paths are resolved against that folder."""
    folder = Path(folder)
    path = folder / ROUTING_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{folder} has no {ROUTING_NAME}")
    data = json.loads(path.read_text())
    adapters = {name: (folder / rel).resolve() for name, rel in data["adapters"].items()}
    unknown = {n for n in [*data["routes"].values(), data.get("default")] if n and n not in adapters}
    if unknown:
        raise ValueError(f"{path}: routes name adapters it does not list: {sorted(unknown)}")
    return Routing(adapters, dict(data["routes"]), data.get("default"),
                   {k: tuple(v) for k, v in data.get("sectors", {}).items()}, data.get("task", "direction"))


def write_routing(folder: str | Path, routing: Routing) -> Path:
    folder = Path(folder).resolve()
    path = folder / ROUTING_NAME
    path.write_text(json.dumps(routing.to_json(folder), indent=2, sort_keys=True) + "\n")
    return path
