"""The one-machine stack: compose.yaml is valid compose, and everything it references exists and agrees."""

from __future__ import annotations

import re
import subprocess
import sys
from typing import Any

import yaml

from conftest import REPO

DOCKER = REPO / "deploy" / "docker"
COMPOSE = DOCKER / "compose.yaml"
DIGEST = re.compile(r"^[\w./-]+:[\w.-]+@sha256:[0-9a-f]{64}$")


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def services() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose()["services"]
    return found


def bind_mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(host path, container path) of each bind mount: the volumes whose source is a path."""
    out = []
    for spec in service.get("volumes", []):
        source, target = spec.split(":")[:2]
        if source.startswith((".", "/")):
            out.append((source, target))
    return out


def test_compose_validates_against_the_compose_specification() -> None:
    """The compose-spec JSON schema vendored by check-jsonschema: no engine needed."""
    proc = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_stack_has_every_component() -> None:
    assert set(services()) == {"api", "worker", "monitor", "redis", "postgres", "mlflow", "prometheus", "grafana"}


def test_drift_checks_run_beside_the_api_in_their_own_image() -> None:
    """The api's image has no Evidently; the monitor's is built from the same Dockerfile with the monitor extra, and
    writes its verdicts into the prediction log the api reads."""
    api, monitor = services()["api"], services()["monitor"]
    assert monitor["build"]["args"]["EXTRAS"] == "serve,monitor" and "args" not in api["build"]
    assert monitor["image"] != api["image"] and monitor["command"] == ["monitor", "--watch"]
    assert monitor["environment"]["PLANTDX_MONITOR__LOG_URL"] == api["environment"]["PLANTDX_MONITOR__LOG_URL"]


def test_every_referenced_file_exists() -> None:
    for name, service in services().items():
        for source, _ in bind_mounts(service):
            assert (DOCKER / source).exists(), f"{name} mounts {source}, which does not exist"
        if "build" in service:
            context = (DOCKER / service["build"]["context"]).resolve()
            assert context.is_dir(), name
            assert (context / service["build"]["dockerfile"]).is_file(), name


def test_monitoring_uses_the_repositorys_prometheus_and_grafana_files() -> None:
    mounts = {name: dict(bind_mounts(s)) for name, s in services().items()}
    assert mounts["prometheus"] == {
        "../prometheus/prometheus.yml": "/etc/prometheus/prometheus.yml",
        "../prometheus/rules": "/etc/prometheus/rules",
    }
    assert mounts["grafana"] == {
        "../grafana/provisioning": "/etc/grafana/provisioning",
        "../grafana/dashboards": "/var/lib/grafana/dashboards",
    }
    assert (DOCKER / "../grafana/provisioning/datasources/prometheus.yml").is_file()
    assert (DOCKER / "../grafana/provisioning/dashboards/plantdx.yml").is_file()
    # Prometheus scrapes the api service on the port it listens on; Grafana reads the prometheus service.
    scrape = yaml.safe_load((REPO / "deploy/prometheus/prometheus.yml").read_text())
    targets = {t for job in scrape["scrape_configs"] for sc in job.get("static_configs", []) for t in sc["targets"]}
    assert "api:8000" in targets
    assert services()["api"]["environment"].get("PLANTDX_SERVE__PORT", "8000") == "8000"
    assert "8000:8000" in services()["api"]["ports"]
    datasources = yaml.safe_load((REPO / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    assert datasources["datasources"][0]["url"] == "http://prometheus:9090"
    provider = yaml.safe_load((REPO / "deploy/grafana/provisioning/dashboards/plantdx.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"


def test_images_are_pinned_or_built_here() -> None:
    for name, service in services().items():
        image = service["image"]
        if "build" in service:
            assert image.startswith("plantdx-"), name
        else:
            assert DIGEST.match(image), f"{name}: {image} is not pinned by tag and digest"


def test_mlflow_keeps_runs_in_postgres_and_artifacts_on_a_volume() -> None:
    mlflow = services()["mlflow"]
    flags = dict(f.removeprefix("--").split("=", 1) for f in mlflow["command"] if "=" in f)
    assert flags["backend-store-uri"].startswith("postgresql+psycopg://plantdx:")
    assert flags["backend-store-uri"].endswith("@postgres:5432/mlflow")
    assert "--serve-artifacts" in mlflow["command"]
    volume = next(v.split(":")[0] for v in mlflow["volumes"] if v.endswith(":" + flags["artifacts-destination"]))
    assert volume in compose()["volumes"]
    # The database it names is created by the init script postgres runs on its first start.
    init = dict(bind_mounts(services()["postgres"]))
    assert "CREATE DATABASE mlflow" in (DOCKER / next(iter(init))).read_text()
    assert all(h in flags["allowed-hosts"].split(",") for h in ("mlflow:5000", "localhost:5000"))


def test_api_and_worker_share_the_image_redis_and_settings() -> None:
    api, worker = services()["api"], services()["worker"]
    assert api["image"] == worker["image"] and api["build"] == worker["build"]
    assert worker["command"] == ["worker"]
    assert api["environment"] == worker["environment"]
    env = api["environment"]
    assert env["PLANTDX_SERVE__REDIS_URL"] == "redis://redis:6379/0"
    assert (
        env["PLANTDX_MONITOR__LOG_URL"].startswith("postgresql+psycopg://")
        and "@postgres:5432/" in env["PLANTDX_MONITOR__LOG_URL"]
    )
    assert env["PLANTDX_TRACKING__URI"] == "http://mlflow:5000"
    # The image's root filesystem is read-only: state goes to the named volume at the working directory.
    assert api["read_only"] is True and "plantdx-data:/var/lib/plantdx" in api["volumes"]
    assert env["PLANTDX_MONITOR__REPORT_DIR"].startswith("/var/lib/plantdx/")
    # Longer than the service's own drain (PLANTDX_SERVE__DRAIN_TIMEOUT_S, 20 s by default).
    assert int(api["stop_grace_period"].removesuffix("s")) > 20


def test_secrets_come_from_the_environment_never_the_file() -> None:
    text = COMPOSE.read_text()
    for name in ("POSTGRES_PASSWORD", "PLANTDX_ADMIN_TOKEN", "GRAFANA_ADMIN_PASSWORD"):
        uses = re.findall(r"\$\{" + name + r"([^}]*)\}", text)
        assert uses and all(u.startswith(":?") for u in uses), f"{name} must be required, without a default"
        assert f"{name}=" in (DOCKER / "env.example").read_text()
    assert ".env" in (DOCKER / ".gitignore").read_text().split()
