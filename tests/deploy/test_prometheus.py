"""deploy/prometheus and deploy/grafana: promtool accepts the config and rules and their unit tests pass, the
dashboard and rules name only metrics the service exports (a renamed metric breaks this, not a silent panel), and
a real Prometheus scrapes a real ``plantdx serve`` and evaluates the repo's rules on it."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from conftest import Server, free_port, jpeg, start_server
from plantdx.inference import default_bundle_path
from plantdx.serve.metrics import Metrics

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
CONFIG = PROMETHEUS_DIR / "prometheus.yml"
RULES = PROMETHEUS_DIR / "rules" / "plantdx.rules.yml"
RULE_TESTS = PROMETHEUS_DIR / "tests" / "plantdx.rules.test.yml"
GRAFANA_DIR = REPO / "deploy" / "grafana"
DASHBOARD = GRAFANA_DIR / "dashboards" / "plantdx.json"
DATASOURCES = GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDERS = GRAFANA_DIR / "provisioning" / "dashboards" / "plantdx.yml"

INSTALL_HINT = "install it with `apt-get install -y --no-install-recommends prometheus` (Debian package)"
# What the issue asks the alerts to cover, by name.
REQUIRED_ALERTS = {
    "PlantdxHighErrorRate",
    "PlantdxHighLatencyP99",
    "PlantdxDriftDetected",
    "PlantdxNotReady",
    "PlantdxQueueSaturated",
    "PlantdxLoadShedding",
    "PlantdxLiveAccuracyDrop",
}
# Series Prometheus makes itself, not the service.
PROMETHEUS_SERIES = {"up", "ALERTS"}
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "on", "ignoring", "group_left", "group_right", "inf", "nan"}
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
}


def tool(name: str) -> str:
    """Fail, not skip, without the binary: CI installs it, so a missing one is a broken setup."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"`{name}` is not on PATH: {INSTALL_HINT}")
    return path


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool("promtool"), *args], cwd=REPO, capture_output=True, text=True, timeout=120)


def exported_series() -> dict[str, str]:
    """Every series name the service can export, mapped to its metric family (from the one Metrics registry)."""
    series = {}
    for family in Metrics().registry.collect():
        for suffix in _SUFFIXES[family.type]:
            series[family.name + suffix] = family.name
    return series


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: good enough for the expressions in this repo.

    Strings, label matchers, ranges and grouping label lists go first, so that label names and Grafana variables
    are not taken for metrics; then any identifier not called as a function and not a keyword is a metric.
    """
    expr = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)
    expr = re.sub(r"\{[^}]*\}", " ", expr)
    expr = re.sub(r"\[[^\]]*\]", " ", expr)
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    names = set()
    for match in re.finditer(r"(?<![\w.:$])[a-zA-Z_:][\w:]*", expr):
        if expr[match.end() :].lstrip().startswith("(") or match.group() in _KEYWORDS:
            continue
        names.add(match.group())
    return names


def rule_groups() -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = yaml.safe_load(RULES.read_text())["groups"]
    return groups


def rules_of(kind: str) -> list[dict[str, Any]]:
    return [rule for group in rule_groups() for rule in group["rules"] if kind in rule]


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))  # panels inside collapsed rows


def dashboard_exprs(board: dict[str, Any]) -> list[str]:
    """Every PromQL expression in the dashboard: panel targets, annotations and the instance variable."""
    exprs = [t["expr"] for p in all_panels(board["panels"]) for t in p.get("targets", [])]
    exprs += [a["expr"] for a in board["annotations"]["list"] if "expr" in a]
    for variable in board["templating"]["list"]:
        query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
        match = re.fullmatch(r"label_values\((.+),\s*\w+\)", query)
        assert match, f"unexpected variable query {query!r}"
        exprs.append(match.group(1))
    return exprs


def grafana_to_promql(expr: str) -> str:
    """What Grafana sends for a panel: its variables filled in."""
    return (
        expr.replace("$__rate_interval", "1m")
        .replace("$__range", "5m")
        .replace("$__interval", "15s")
        # "$instance" is an All/multi variable: Grafana sends the allValue regex
        .replace("$instance", ".*")
    )


# ---------------------------------------------------------------- promtool


def test_promtool_accepts_the_config_and_the_rules_it_loads() -> None:
    result = promtool("check", "config", str(CONFIG.relative_to(REPO)))
    assert result.returncode == 0, result.stdout + result.stderr
    # rule_files is resolved against the config's folder, so this also proves the compose path finds the rules
    assert "SUCCESS: 1 rule files found" in result.stdout + result.stderr, result.stdout + result.stderr
    assert RULES.name in result.stdout + result.stderr


def test_promtool_accepts_the_rules() -> None:
    result = promtool("check", "rules", str(RULES.relative_to(REPO)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules_of('alert')) + len(rules_of('record'))} rules found" in result.stdout


def test_promtool_rule_unit_tests_pass() -> None:
    result = promtool("test", "rules", str(RULE_TESTS.relative_to(REPO)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


# ---------------------------------------------------------------- rules and scrape config


def test_config_scrapes_the_api_and_loads_the_rules_folder() -> None:
    config = yaml.safe_load(CONFIG.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["plantdx-api"]["static_configs"][0]["targets"] == ["api:8000"]
    assert jobs["plantdx-api"].get("metrics_path", "/metrics") == "/metrics"
    assert "prometheus" in jobs
    # relative, so it resolves to /etc/prometheus/rules/ in compose and to deploy/prometheus/rules/ here
    assert config["rule_files"] == ["rules/*.yml"]
    assert RULES in CONFIG.parent.glob(config["rule_files"][0])


def test_every_alert_is_actionable_and_unit_tested() -> None:
    alerts = {rule["alert"]: rule for rule in rules_of("alert")}
    assert REQUIRED_ALERTS <= set(alerts), REQUIRED_ALERTS - set(alerts)
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    cases = [case for test in tests for case in test.get("alert_rule_test", [])]
    for name, rule in alerts.items():
        assert rule.get("for"), f"{name}: no `for:`, it would fire on a single bad scrape"
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert {"summary", "description", "runbook"} <= set(rule["annotations"]), name
        expected = [c["exp_alerts"] for c in cases if c["alertname"] == name]
        assert any(expected), f"{name}: no promtool test where it fires"
        assert [] in expected, f"{name}: no promtool test where it stays quiet"


def test_rules_name_only_metrics_the_service_exports() -> None:
    exported = set(exported_series())
    recorded = {rule["record"] for rule in rules_of("record")}
    for rule in rules_of("record") + rules_of("alert"):
        names = metric_names(rule["expr"])
        assert names, f"found no metric in {rule['expr']!r}"
        unknown = names - exported - recorded - PROMETHEUS_SERIES
        assert not unknown, f"{rule.get('alert') or rule.get('record')}: {sorted(unknown)} not exported"


def test_metric_names_finds_metrics_and_skips_labels_functions_and_variables() -> None:
    expr = (
        'sum by (le, route) (rate(plantdx_http_request_duration_seconds_bucket{instance=~"$instance", '
        'route!~"/metrics|x"}[$__rate_interval])) / on (job) group_left job:plantdx_http_requests:rate5m '
        "and time() - plantdx_drift_last_check_timestamp_seconds > 1e-9 unless up offset 5m"
    )
    assert metric_names(expr) == {
        "plantdx_http_request_duration_seconds_bucket",
        "job:plantdx_http_requests:rate5m",
        "plantdx_drift_last_check_timestamp_seconds",
        "up",
    }


# ---------------------------------------------------------------- Grafana


def test_dashboard_names_only_metrics_the_service_exports() -> None:
    exported = set(exported_series())
    recorded = {rule["record"] for rule in rules_of("record")}
    for expr in dashboard_exprs(dashboard()):
        names = metric_names(expr)
        assert names, f"found no metric in {expr!r}"
        unknown = names - exported - recorded - PROMETHEUS_SERIES
        assert not unknown, f"{sorted(unknown)} in {expr!r} are not exported by plantdx"


def test_dashboard_shows_every_metric_family_the_service_exports() -> None:
    series = exported_series()
    shown = {series[name] for expr in dashboard_exprs(dashboard()) for name in metric_names(expr) if name in series}
    missing = set(series.values()) - shown
    assert not missing, f"metrics with no dashboard panel: {sorted(missing)}"


def test_dashboard_is_wired_to_the_provisioned_datasource() -> None:
    board = dashboard()
    sources = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    (prometheus,) = [s for s in sources if s["type"] == "prometheus"]
    assert prometheus["url"] == "http://prometheus:9090"
    providers = yaml.safe_load(DASHBOARD_PROVIDERS.read_text())["providers"]
    assert providers[0]["type"] == "file" and providers[0]["options"]["path"].startswith("/var/lib/grafana/")

    panels = list(all_panels(board["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    assert board["uid"] and board["schemaVersion"] >= 36
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["title"] and panel["gridPos"]["w"] <= 24, panel["title"]
        assert panel["targets"], panel["title"]
        for source in [panel["datasource"], *(t["datasource"] for t in panel["targets"])]:
            assert source == {"type": "prometheus", "uid": prometheus["uid"]}, panel["title"]
    titles = " | ".join(p["title"].lower() for p in panels)
    for topic in ("requests", "latency", "batch", "class", "confidence", "abstention", "drift", "accuracy", "ready"):
        assert topic in titles, topic


# ---------------------------------------------------------------- a real Prometheus scraping a real service


@dataclass
class Prometheus:
    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def query(self, promql: str) -> dict[str, Any]:
        response = httpx.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=10)
        body: dict[str, Any] = response.json()
        assert response.status_code == 200 and body["status"] == "success", (promql, body)
        data: dict[str, Any] = body["data"]
        return data

    def value(self, promql: str) -> float | None:
        """The single sample a query returns, or None while it returns nothing."""
        result = self.query(promql)["result"]
        return float(result[0]["value"][1]) if result else None


def wait_for(what: str, check: Callable[[], bool], log: Path, timeout: float = 45) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    pytest.fail(f"timed out waiting for {what}; Prometheus log:\n{log.read_text()[-3000:]}")


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Server]:
    server = start_server(default_bundle_path(), tmp_path)
    try:
        yield server
    finally:
        server.proc.terminate()
        try:
            server.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.proc.kill()


@pytest.fixture
def prometheus(service: Server, tmp_path: Path) -> Iterator[Prometheus]:
    """The repo's config, scraping the service on loopback every second and loading the repo's rules."""
    binary = tool("prometheus")
    port = free_port()
    config = yaml.safe_load(CONFIG.read_text())
    config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    config["rule_files"] = [str(CONFIG.parent / pattern) for pattern in config["rule_files"]]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    jobs["plantdx-api"]["static_configs"][0]["targets"] = [service.url.removeprefix("http://")]
    jobs["prometheus"]["static_configs"][0]["targets"] = [f"127.0.0.1:{port}"]
    config_file = tmp_path / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config))
    log = tmp_path / "prometheus.log"
    cmd = [
        binary,
        f"--config.file={config_file}",
        f"--storage.tsdb.path={tmp_path / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=tmp_path)
    server = Prometheus(proc, f"http://127.0.0.1:{port}", log)
    try:

        def ready() -> bool:
            assert proc.poll() is None, f"prometheus exited:\n{log.read_text()[-3000:]}"
            try:
                return httpx.get(f"{server.url}/-/ready", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_for("Prometheus to start", ready, log, timeout=60)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def predict(service: Server) -> str:
    response = httpx.post(f"{service.url}/v1/predict", files={"file": ("leaf.jpg", jpeg(), "image/jpeg")}, timeout=30)
    assert response.status_code == 200, response.text
    label: str = response.json()["prediction"]
    return label


@pytest.mark.slow
def test_prometheus_scrapes_the_service_and_evaluates_the_rules(service: Server, prometheus: Prometheus) -> None:
    job = '{job="plantdx-api"}'
    wait_for("the service's first scrape", lambda: prometheus.value(f"plantdx_ready{job}") == 1.0, prometheus.log)
    assert prometheus.value(f"up{job}") == 1.0

    label = predict(service)
    wait_for(
        "the prediction to reach Prometheus",
        lambda: prometheus.value(f'plantdx_predictions_total{{job="plantdx-api", label="{label}"}}') == 1.0,
        prometheus.log,
    )
    predict(service)  # a second one, now that the series exists, so rate() has an increase to see
    wait_for(
        "the request-rate recording rule to see the traffic",
        lambda: (prometheus.value(f"job:plantdx_http_requests:rate5m{job}") or 0.0) > 0,
        prometheus.log,
    )
    assert prometheus.value(f"sum(plantdx_predictions_total{job})") == 2.0

    # Prometheus loaded the repo's rule files and evaluates every rule without error.
    def evaluated() -> list[dict[str, Any]] | None:
        groups = httpx.get(f"{prometheus.url}/api/v1/rules", timeout=10).json()["data"]["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        return rules if rules and all(rule["health"] == "ok" for rule in rules) else None

    wait_for("every rule to be evaluated", lambda: evaluated() is not None, prometheus.log)
    rules = evaluated() or []
    assert {r["name"] for r in rules if r["type"] == "alerting"} == {r["alert"] for r in rules_of("alert")}
    assert {r["name"] for r in rules if r["type"] == "recording"} == {r["record"] for r in rules_of("record")}
    assert not [r["name"] for r in rules if r.get("lastError")]
    # A healthy service raises no alert, not even a pending one (every rule waits 2 min or more before firing, so
    # "none firing" would hold here whatever the expressions said).
    assert {r["name"]: r["state"] for r in rules if r["type"] == "alerting" and r["state"] != "inactive"} == {}
    assert [a for r in rules if r["type"] == "alerting" for a in r["alerts"]] == []

    # Every dashboard query parses and runs against the real data, as Grafana would send it.
    for expr in dashboard_exprs(dashboard()):
        prometheus.query(grafana_to_promql(expr))
    assert prometheus.value('max(plantdx_model_info{job="plantdx-api"})') == 1.0
