"""The Grafana dashboard queries only metrics the code exports, and shows every one of them."""
from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from streams.metrics import exported_names

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "infra" / "grafana"
METRIC_NAME = re.compile(r"\bfinllm_[a-z0-9_]+")


def panels() -> list[dict]:
    dashboard = json.loads((GRAFANA / "dashboards" / "finllm.json").read_text())
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def queried_names() -> set[str]:
    return {name for p in panels() for t in p["targets"] for name in METRIC_NAME.findall(t["expr"])}


def test_every_panel_queries_exported_metrics_only(metric_groups) -> None:
    exported = exported_names(metric_groups)
    for panel in panels():
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            names = METRIC_NAME.findall(target["expr"])
            assert names, f"{panel['title']}: {target['expr']} names no finllm metric"
            unknown = set(names) - exported
            assert not unknown, f"{panel['title']}: {unknown} are not exported"


def test_every_exported_metric_is_on_the_dashboard(metric_groups) -> None:
    shown = queried_names()
    for group in metric_groups:
        for family in group().registry.collect():
            assert any(n == family.name or n.startswith(family.name + "_") for n in shown), family.name


def test_panels_use_the_provisioned_datasource_and_the_provider_path_is_mounted() -> None:
    datasource = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    uid = datasource["datasources"][0]["uid"]
    assert {p["datasource"]["uid"] for p in panels()} == {uid}
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "finllm.yml").read_text())
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    mounts = dict(v.split(":")[:2][::-1] for v in compose["services"]["grafana"]["volumes"])
    assert Path(ROOT / mounts[provider["providers"][0]["options"]["path"]]).samefile(GRAFANA / "dashboards")


def test_panel_ids_are_unique() -> None:
    dashboard = json.loads((GRAFANA / "dashboards" / "finllm.json").read_text())
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
