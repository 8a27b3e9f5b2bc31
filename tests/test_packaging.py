"""The built wheel asks for ranges, never exact pins; the exact pins of constraints.txt fall inside them."""
import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("schemas", "streams", "agents", "inference")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    """Build the wheel from a copy of the source (building in place would write build/ into the checkout)."""
    src, out = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("wheel")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for package in PACKAGES:
        shutil.copytree(ROOT / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "--wheel-dir", str(out), str(src)], check=True)
    return zipfile.ZipFile(next(out.glob("*.whl")))


def requirements(wheel: zipfile.ZipFile) -> list[Requirement]:
    metadata = next(name for name in wheel.namelist() if name.endswith(".dist-info/METADATA"))
    message = Parser().parsestr(wheel.read(metadata).decode())
    return [Requirement(line) for line in message.get_all("Requires-Dist")]


def pins() -> dict[str, str]:
    lines = (line.split("#")[0].strip() for line in (ROOT / "constraints.txt").read_text().splitlines())
    return {canonicalize_name(name): version for name, version in (line.split("==") for line in lines if line)}


def test_wheel_metadata_carries_no_exact_pins(wheel):
    reqs = requirements(wheel)
    assert {"torch", "transformers", "click", "faust-streaming"} <= {canonicalize_name(r.name) for r in reqs}
    pinned = [str(r) for r in reqs if any(spec.operator in ("==", "===") for spec in r.specifier)]
    assert not pinned, f"exact pins belong in constraints.txt: {pinned}"


def test_constraints_pin_every_requirement_inside_its_range(wheel):
    constraints = pins()
    for req in requirements(wheel):
        name = canonicalize_name(req.name)
        assert name in constraints, f"{name} is not pinned in constraints.txt"
        assert req.specifier.contains(constraints[name], prereleases=True), (
            f"constraints.txt pins {name}=={constraints[name]}, outside the project's range {req.specifier}")


def test_wheel_ships_the_packages_and_their_data(wheel):
    names = set(wheel.namelist())
    assert {f"{package}/__init__.py" for package in PACKAGES} <= names
    assert "streams/data/sample_tape/ticks.parquet" in names
    assert any(name.startswith("inference/data/adapters/") and name.endswith(".safetensors") for name in names)


def test_no_bench_script_shadows_a_standard_library_module():
    """`python bench/X.py` puts bench/ first on sys.path: a bench/http.py there broke every bench script
    whose imports reach the standard library's `http` package."""
    bench = Path(__file__).resolve().parents[1] / "bench"
    shadowing = sorted(p.name for p in bench.glob("*.py") if p.stem in sys.stdlib_module_names)
    assert not shadowing
