"""The adapters shipped for each registered base model, and how the pipeline routes symbols to them.

One set per base model, in `inference/data/adapters/<model name>/` (`tiny`, `smollm2-135m`): its
`routing.json` lists the adapter folders (name -> folder beside it), the sector of every synthetic
ticker, and the route of each symbol to its sector's adapter for the served task, plus a default
adapter for symbols without a sector. `shipped_routing(model)` finds the set of the model a worker
serves (a registered name, or the folder a registered model was converted into); a model with no
set (any other local folder) gets none, so no request names an adapter trained on another base.
`Routing.env()` is what the two workers read: FINLLM_ROUTING_FILE, the routing file itself (the
inference worker loads its adapters, the agents route each symbol's requests by it); or, for a
routing built in code, FINLLM_ADAPTER_PATHS (what to load) and FINLLM_ADAPTERS /
FINLLM_DEFAULT_ADAPTER (`AgentsConfig.adapters`).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from streams.settings import ROUTING_FILE_ENV, read_routing_file

SHIPPED_DIR = Path(__file__).resolve().parents[1] / "data" / "adapters"   # one folder per base model
ROUTING_NAME = "routing.json"


def shipped_dir(model: str | None = None) -> Path:
    """The folder of the adapters shipped for registered model `model` (None: the default model)."""
    from inference.checkpoints import DEFAULT_MODEL

    return SHIPPED_DIR / (model or DEFAULT_MODEL)


def shipped_routing(model: str | os.PathLike | None = None) -> Routing | None:
    """The shipped adapters and routes for the model a worker serves: a registered name, a folder that
    is a registered model's cache folder, or None (the default model); None when none are shipped."""
    from inference.checkpoints import registered_name

    name = registered_name(model)
    folder = SHIPPED_DIR / name if name else None
    return load_routing(folder) if folder and (folder / ROUTING_NAME).is_file() else None


@dataclass(frozen=True, slots=True)
class Routing:
    adapters: dict[str, Path]            # name -> PEFT folder
    routes: dict[str, str]               # symbol -> adapter name
    default: str | None                  # adapter for symbols without a route
    sectors: dict[str, tuple[str, ...]]  # sector -> symbols
    task: str = "direction"
    file: Path | None = None             # the routing file read, if any

    def adapter_for(self, symbol: str) -> str | None:
        return self.routes.get(symbol, self.default)

    def env(self) -> dict[str, str]:
        """The workers' settings for this routing: its file when it was read from one, else the expanded
        lists (FINLLM_ADAPTER_PATHS for the inference worker, FINLLM_ADAPTERS for the agents)."""
        if self.file:
            return {ROUTING_FILE_ENV: str(self.file)}
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


def load_routing(where: str | Path) -> Routing:
    """Read an adapter set's routing file (`where`: the file, or the folder holding `routing.json`);
    adapter paths are resolved against its folder."""
    path = Path(where)
    path = path / ROUTING_NAME if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: no adapter set there")
    data = read_routing_file(path)
    adapters = {name: (path.parent / rel).resolve() for name, rel in data["adapters"].items()}
    return Routing(adapters, dict(data["routes"]), data.get("default"),
                   {k: tuple(v) for k, v in data.get("sectors", {}).items()}, data.get("task", "direction"),
                   path.resolve())


def write_routing(folder: str | Path, routing: Routing) -> Path:
    folder = Path(folder).resolve()
    path = folder / ROUTING_NAME
    path.write_text(json.dumps(routing.to_json(folder), indent=2, sort_keys=True) + "\n")
    return path


BASE_MODEL_ENV = "FINLLM_BASE_MODEL"


def base_tier_env(env: dict[str, str]) -> dict[str, str]:
    """The settings a base-tier worker serves with, from the pool's settings `env`: FINLLM_BASE_MODEL names
    the base tier's model (a registered name or a folder; `same`: the served model, FINLLM_MODEL). Its
    default, `auto`, is the student the served model's registry entry names (SmolLM2's first 8 layers for
    `smollm2-135m`) with its shipped, distilled adapters, when the workers serve the served model's shipped
    set (FINLLM_ROUTING_FILE is that set's file, and no FINLLM_ADAPTER_PATHS): adapters trained on the
    served model do not fit another one, so a worker given its own adapters keeps the served model; and so
    does a worker that serves the HTTP API (FINLLM_HTTP_PORT): chats and explanations want the whole model,
    not a student that only learnt to pick a direction label."""
    from inference.checkpoints import base_tier_model

    choice = env.get(BASE_MODEL_ENV) or "auto"
    served = env.get("FINLLM_MODEL") or None
    if choice == "same" or (choice == "auto" and env.get("FINLLM_HTTP_PORT")):
        return dict(env)
    if choice == "auto":
        own, routed = shipped_routing(served), env.get(ROUTING_FILE_ENV)
        uses_own = own is not None and routed and Path(routed).resolve() == own.file and not env.get("FINLLM_ADAPTER_PATHS")
        choice = base_tier_model(served) if uses_own else None
        if choice is None or shipped_routing(choice) is None:
            return dict(env)
    student = shipped_routing(choice)
    out = dict(env, FINLLM_MODEL=choice)
    if student is not None:
        out[ROUTING_FILE_ENV] = str(student.file)
    return out
