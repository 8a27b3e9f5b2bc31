"""The package layering holds: import-linter's contracts (in pyproject.toml) all pass."""
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_hold():
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "broken" not in done.stdout.lower().replace("0 broken", "")


def test_the_runtime_contract_names_every_runtime_module():
    """The contract on the agents runtime lists its modules by name: a new one must join the list."""
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    listed = {c["name"]: set(c["source_modules"]) for c in contracts}
    runtime = {f"agents.{p.stem}" for p in (ROOT / "agents").glob("*.py") if p.stem != "__init__"}
    assert listed["the agents runtime imports nothing of inference, the command line or the lab"] == runtime
