"""The docker/ deployment, checked without a Docker engine: files parse, services and settings agree with the
contract, the dashboard queries metrics that exist, Prometheus config and rules pass promtool (when installed)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from monitoring.exporter import PREFIX as MONITOR_PREFIX
from monitoring.exporter import RATES, MonitorCollector
from monitoring.settings import MonitorSettings
from workers.metrics import WorkerMetrics
from workers.settings import WorkerSettings

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
CONTRACT_VARS = {
    "ZEROPROOF_KAFKA_BOOTSTRAP",
    "ZEROPROOF_REDIS_URL",
    "ZEROPROOF_MODEL",
    "ZEROPROOF_TAU_INFER",
    "ZEROPROOF_TAU_TRAIN",
    "ZEROPROOF_INPUT_TOPIC",
    "ZEROPROOF_OUTPUT_TOPIC",
    "ZEROPROOF_FALLBACK_TOPIC",
    "ZEROPROOF_DLQ_TOPIC",
    "ZEROPROOF_STATS_TOPIC",
    "ZEROPROOF_ALERTS_TOPIC",
    "ZEROPROOF_GROUP_ID",
    "ZEROPROOF_METRICS_PORT",
}


@pytest.fixture(scope="module")
def compose() -> dict:  # type: ignore[type-arg]
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def test_compose_has_the_whole_stack(compose: dict) -> None:  # type: ignore[type-arg]
    services = compose["services"]
    for name in (
        "kafka",
        "kafka-init",
        "redis",
        "model-init",
        "worker",
        "monitor",
        "prometheus",
        "alertmanager",
        "grafana",
        "kafka-exporter",
    ):
        assert name in services, name
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert "broker,controller" in services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"]  # KRaft, no ZooKeeper
    assert services["worker"]["deploy"]["replicas"] >= 2  # replicas share partitions through the consumer group
    gpu = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["capabilities"] == ["gpu"]
    assert "--requirepass" in services["redis"]["command"]


def _settings_fields(cls: type) -> set[str]:
    """Every variable the settings read (a renamed setting also reads its old name)."""
    return {env for doc in cls.reference() for env in doc.env}  # type: ignore[attr-defined]


def test_service_environment_uses_real_settings(compose: dict) -> None:  # type: ignore[type-arg]
    worker_env = compose["services"]["worker"]["environment"]
    monitor_env = compose["services"]["monitor"]["environment"]
    assert set(worker_env) <= _settings_fields(WorkerSettings), set(worker_env) - _settings_fields(WorkerSettings)
    assert set(monitor_env) <= _settings_fields(MonitorSettings) | {
        "ZEROPROOF_REDIS_URL",
        "ZEROPROOF_INPUT_TOPIC",
        "ZEROPROOF_OUTPUT_TOPIC",
        "ZEROPROOF_FALLBACK_TOPIC",
        "ZEROPROOF_DLQ_TOPIC",
    }
    assert CONTRACT_VARS - {"ZEROPROOF_TAU_INFER", "ZEROPROOF_TAU_TRAIN"} <= set(worker_env) | {"ZEROPROOF_MODEL"}
    contract_topics = {
        "INPUT": "zeroproof.inputs",
        "OUTPUT": "zeroproof.outputs",
        "FALLBACK": "zeroproof.fallback",
        "DLQ": "zeroproof.dlq",
        "STATS": "zeroproof.stats",
        "ALERTS": "zeroproof.alerts",
    }
    for kind, topic in contract_topics.items():
        assert worker_env[f"ZEROPROOF_{kind}_TOPIC"] == topic
        assert getattr(WorkerSettings(), f"{kind.lower()}_topic") == topic
    assert worker_env["ZEROPROOF_KAFKA_BOOTSTRAP"] == "kafka:9092"


def test_contract_settings_exist_in_the_worker() -> None:
    assert _settings_fields(WorkerSettings) >= CONTRACT_VARS


def test_dockerfiles_match_the_package() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    for dockerfile, entry in (("worker.Dockerfile", "zeroproof-worker"), ("monitor.Dockerfile", "zeroproof-monitor")):
        text = (DOCKER / dockerfile).read_text()
        assert f'ENTRYPOINT ["{entry}"]' in text and entry in scripts
        for src in re.findall(r"^COPY (\S+)", text, flags=re.M):
            assert (ROOT / src).exists(), f"{dockerfile}: COPY {src} does not exist"
        assert "USER zeroproof" in text  # not root
    assert "cuda" in (DOCKER / "worker.Dockerfile").read_text()  # the worker image is GPU-capable


def _known_metric_names() -> set[str]:
    names = {m.name for m in WorkerMetrics().registry.collect()}
    names |= {m.name for m in MonitorCollector().collect()}
    names |= {MONITOR_PREFIX + name for name, _ in RATES}
    names |= {MONITOR_PREFIX + "shadow_" + name for name, _ in RATES}
    names |= {MONITOR_PREFIX + n for n in ("alert_firing", "alert_state", "predictions")}
    return names


def test_dashboard_is_valid_and_queries_existing_metrics() -> None:
    dashboard = json.loads((DOCKER / "grafana" / "dashboards" / "zeroproof.json").read_text())
    known = _known_metric_names()
    external = {"kafka_consumergroup_lag", "ALERTS", "time"}
    titles = {p["title"] for p in dashboard["panels"]}
    for needed in ("Throughput", "latency", "Coverage", "gap", "Fallbacks", "DLQ", "lag"):
        assert any(needed.lower() in t.lower() for t in titles), needed
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            for metric in re.findall(r"\b(zeroproof_[a-z_]+|kafka_[a-z_]+|ALERTS)\b", target["expr"]):
                base = re.sub(r"_(total|bucket|sum|count)$", "", metric)
                assert metric in known or base in known or metric in external, f"{panel['title']}: {metric}"
    provider = yaml.safe_load((DOCKER / "grafana/provisioning/dashboards/zeroproof.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"


def test_alertmanager_config_parses() -> None:
    config = yaml.safe_load((DOCKER / "alertmanager" / "alertmanager.yml").read_text())
    receivers = {r["name"] for r in config["receivers"]}
    assert config["route"]["receiver"] in receivers


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (Debian: prometheus)")
def test_prometheus_config_and_rules_pass_promtool(tmp_path: Path) -> None:
    rules = ROOT / "monitoring" / "prometheus" / "zeroproof-rules.yml"
    config = (DOCKER / "prometheus" / "prometheus.yml").read_text()
    (tmp_path / "prometheus.yml").write_text(config.replace("/etc/prometheus/rules/zeroproof-rules.yml", str(rules)))
    proc = subprocess.run(
        ["promtool", "check", "config", str(tmp_path / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
