"""docker-compose.yml against the code: commands that exist, variables the code reads, ports that agree.

No Docker engine runs here; `docker compose config` / `docker-compose config` validate the file
where a client is installed (Debian: `apt-get install docker-compose`), and are skipped otherwise.
"""
from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from agents.cli import cli

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
CODE_DIRS = ("schemas", "streams", "agents", "inference", "infra")
REQUIRED = {"kafka", "redis", "topic-init", "agents", "inference", "replay", "prometheus", "grafana"}
OUR_IMAGES = ("finllm:cpu", "finllm:cuda")
METRICS_VAR = "FINLLM_METRICS_PORT"
_DEFAULT = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


def interpolate(value):
    """Compose's `${VAR:-default}` with nothing set: the documented default."""
    if isinstance(value, str):
        return _DEFAULT.sub(lambda m: m.group(2) or "", value)
    if isinstance(value, list):
        return [interpolate(v) for v in value]
    if isinstance(value, dict):
        return {k: interpolate(v) for k, v in value.items()}
    return value


@pytest.fixture(scope="module")
def services() -> dict:
    return interpolate(yaml.safe_load(COMPOSE.read_text()))["services"]


@pytest.fixture(scope="module")
def ours(services) -> dict:
    return {name: s for name, s in services.items() if s.get("image") in OUR_IMAGES}


@pytest.fixture(scope="module")
def vars_read_by_code() -> set[str]:
    pattern = re.compile(r"FINLLM_[A-Z0-9_]+")
    return {v for d in CODE_DIRS for f in (ROOT / d).rglob("*.py") for v in pattern.findall(f.read_text())}


@pytest.mark.parametrize("client", [("docker", "compose"), ("docker-compose",)], ids=["docker compose", "docker-compose"])
def test_compose_client_accepts_the_file(client: tuple[str, ...]) -> None:
    if not shutil.which(client[0]):
        pytest.skip(f"{client[0]} is not installed")
    if client == ("docker", "compose") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode:
        pytest.skip("the docker client has no compose plugin")
    for profile in ([], ["--profile", "cpu"]):
        done = subprocess.run([*client, "-f", str(COMPOSE), *profile, "config", "-q"], capture_output=True, text=True,
                              cwd=ROOT, timeout=60)
        assert done.returncode == 0, done.stderr


def test_services_present_healthchecked_and_ordered(services) -> None:
    assert REQUIRED <= services.keys()
    for name, service in services.items():
        assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
        for dependency, spec in (service.get("depends_on") or {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            assert spec["condition"] in ("service_healthy", "service_completed_successfully"), name


def test_images_are_pinned_and_ours_are_built(services) -> None:
    for name, service in services.items():
        image = service["image"]
        assert ":" in image and not image.endswith(":latest"), f"{name}: unpinned image {image}"
        if image not in OUR_IMAGES:
            assert re.search(r":v?\d+\.\d+\.\d+", image), f"{name}: {image} is not an exact release"
    built = [s for s in services.values() if "build" in s]
    assert {s["image"] for s in built} == set(OUR_IMAGES)
    dockerfile = (ROOT / "infra" / "Dockerfile").read_text()
    assert "USER finllm" in dockerfile and "slim" in dockerfile
    assert (ROOT / ".dockerignore").is_file()


def test_environment_variables_are_ones_the_code_reads(ours, vars_read_by_code) -> None:
    for name, service in ours.items():
        env = service["environment"]
        unread = {k for k in env if k.startswith("FINLLM_")} - vars_read_by_code
        assert not unread, f"{name} sets variables no code reads: {unread}"
        assert {"FINLLM_KAFKA_BOOTSTRAP", "FINLLM_REDIS_URL", METRICS_VAR} <= env.keys(), name


def test_commands_name_real_entry_points(ours) -> None:
    for name, service in ours.items():
        command = service["command"]
        if command[:2] == ["python", "-m"]:
            spec = importlib.util.find_spec(command[2])
            assert spec is not None and "def main(" in Path(spec.origin).read_text(), name
        elif command[0] == "python":
            assert command[1] == "/app/infra/topic_init.py"
            assert "COPY infra/topic_init.py /app/infra/topic_init.py" in (ROOT / "infra" / "Dockerfile").read_text()
        else:
            assert command[0] == "finllm", name
            _check_cli_args([_host_path(service, arg) for arg in command[1:]])


def _host_path(service: dict, arg: str) -> str:
    """A path inside the container as the host folder mounted there (so click can check it exists)."""
    mounts = dict(reversed(v.split(":")[:2]) for v in service.get("volumes", []))
    return str(ROOT / mounts[arg]) if arg in mounts else arg


def _check_cli_args(args: list[str]) -> None:
    ctx = cli.make_context("finllm", list(args), resilient_parsing=True)
    sub = cli.get_command(ctx, args[0])
    assert sub is not None, args[0]
    sub.make_context(args[0], list(args[1:]))   # raises on an unknown option or a bad value


def test_replay_reads_a_tape_mounted_from_the_host(services) -> None:
    replay = services["replay"]
    assert replay["command"][:3] == ["finllm", "replay", "/tape"]
    host, container, mode = replay["volumes"][0].split(":")
    assert container == "/tape" and mode == "ro"
    assert (ROOT / host).is_dir(), "the default tape must exist"


def test_inference_requests_a_gpu_and_has_a_cpu_profile(services) -> None:
    devices = services["inference"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    cpu = services["inference-cpu"]
    assert cpu["profiles"] == ["cpu"] and "deploy" not in cpu
    assert cpu["command"] == services["inference"]["command"]


def test_ports_agree(services, ours) -> None:
    kafka_env = services["kafka"]["environment"]
    advertised = dict(l.split("://") for l in kafka_env["KAFKA_ADVERTISED_LISTENERS"].split(","))
    for name, service in ours.items():
        env = service["environment"]
        assert env["FINLLM_KAFKA_BOOTSTRAP"] == advertised["PLAINTEXT"], name
        redis = urlparse(env["FINLLM_REDIS_URL"])
        assert redis.hostname == "redis" and f"{redis.port}:{redis.port}" in services["redis"]["ports"][0]
        healthcheck = " ".join(service["healthcheck"]["test"])
        if "/metrics" in healthcheck:
            assert f":{env[METRICS_VAR]}/metrics" in healthcheck, name


def test_prometheus_scrapes_every_worker_on_its_metrics_port(services, ours) -> None:
    config = yaml.safe_load((ROOT / "infra" / "prometheus" / "prometheus.yml").read_text())
    scraped = {}
    for job in config["scrape_configs"]:
        for sd in job.get("dns_sd_configs", []):
            scraped |= {name: sd["port"] for name in sd["names"]}
    workers = {name for name in ours if name != "topic-init"}
    assert workers == scraped.keys()
    for name in workers:
        assert scraped[name] == int(ours[name]["environment"][METRICS_VAR]), name
    mount = services["prometheus"]["volumes"][0].split(":")
    assert (ROOT / mount[0]).samefile(ROOT / "infra" / "prometheus" / "prometheus.yml")


def test_the_deep_tier_is_its_own_pool_at_full_precision(services) -> None:
    for base, deep in (("inference", "inference-deep"), ("inference-cpu", "inference-deep-cpu")):
        base_env, deep_env = services[base]["environment"], services[deep]["environment"]
        assert (base_env["FINLLM_TIER"], deep_env["FINLLM_TIER"]) == ("base", "deep")
        assert base_env["FINLLM_ENGINE_QUANT"] == "auto" and deep_env["FINLLM_ENGINE_QUANT"] == ""
        assert services[deep]["command"] == services[base]["command"] and not services[base].get("ports")
        # the base tier serves the distilled student; the HTTP API wants the whole model: the deep tier's
        assert base_env["FINLLM_BASE_MODEL"] == "auto" and base_env["FINLLM_HTTP_PORT"] == ""
        assert deep_env["FINLLM_HTTP_PORT"] and services[deep]["ports"]
    assert services["inference-deep-cpu"]["profiles"] == ["cpu"]
