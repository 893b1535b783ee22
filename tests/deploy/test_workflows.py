"""The GitHub workflows, checked offline: the workflow JSON schema, pinned actions, and that what they run and deploy
exists in this repository. Also the release gate the model workflow runs."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import REPO
from plantdx.inference import default_bundle_path

WORKFLOWS = REPO / ".github" / "workflows"
GATE = REPO / "benchmarks" / "gate.py"
SHA_PIN = re.compile(r"^[\w.-]+/[\w.-]+(/[\w./-]+)?@[0-9a-f]{40} # v\d+\.\d+\.\d+$")


def workflow(name: str) -> dict[str, Any]:
    loaded: dict[Any, Any] = yaml.safe_load((WORKFLOWS / name).read_text())
    loaded["on"] = loaded.pop(True, loaded.get("on"))  # YAML 1.1 reads the key `on` as true
    return loaded


def steps(name: str) -> list[tuple[str, dict[str, Any]]]:
    return [(job, step) for job, spec in workflow(name)["jobs"].items() for step in spec["steps"]]


def run_text(name: str) -> str:
    return "\n".join(step.get("run", "") for _, step in steps(name))


def test_the_workflows_are_there() -> None:
    assert {p.name for p in WORKFLOWS.glob("*.yml")} == {"ci.yml", "model.yml", "deploy.yml"}


def test_workflows_validate_against_the_github_workflow_schema() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows"]
        + [str(p) for p in sorted(WORKFLOWS.glob("*.yml"))],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("name", ["ci.yml", "model.yml", "deploy.yml"])
def test_actions_are_pinned_to_a_commit(name: str) -> None:
    lines = [line.strip() for line in (WORKFLOWS / name).read_text().splitlines() if "uses:" in line]
    assert lines
    for line in lines:
        ref = line.split("uses:", 1)[1].strip()
        assert SHA_PIN.match(ref), f"{name}: {ref} is not pinned to a full commit SHA with its version"


@pytest.mark.parametrize("name", ["ci.yml", "model.yml", "deploy.yml"])
def test_workflows_read_no_more_than_they_need(name: str) -> None:
    assert workflow(name)["permissions"] == {"contents": "read"}
    for job, spec in workflow(name)["jobs"].items():
        assert "timeout-minutes" in spec, job
        writes = {scope for scope, level in spec.get("permissions", {}).items() if level == "write"}
        # Only the jobs that push images may write, and only packages.
        assert writes == ({"packages"} if job in {"serve-image", "train-images"} else set()), job


def test_ci_lints_types_and_tests_on_cpu_torch() -> None:
    text = run_text("ci.yml")
    assert "https://download.pytorch.org/whl/cpu" in yaml.safe_dump(workflow("ci.yml")["env"])
    assert '--index-url "$TORCH_INDEX_URL" torch==2.14.1 torchvision==0.29.1' in text
    pins = (REPO / "pyproject.toml").read_text()
    assert '"torch==2.14.1"' in pins and '"torchvision==0.29.1"' in pins, "keep the CPU install on pyproject's pins"
    for command in ("make install", "make lint", "make test"):
        assert command in text
    makefile = (REPO / "Makefile").read_text()
    for target in re.findall(r"make (\w[\w-]*)", text):
        assert re.search(rf"^{target}:", makefile, re.M), f"make {target} is not in the Makefile"
    assert "hadolint deploy/docker/*.Dockerfile" in text


def test_deploy_maps_each_branch_to_its_environment_and_overlay() -> None:
    deploy = workflow("deploy.yml")
    assert deploy["on"]["push"]["branches"] == ["develop", "staging", "main"]
    job = deploy["jobs"]["deploy"]
    mapping = "github.ref_name == 'main' && 'production' || github.ref_name == 'staging' && 'staging' || 'development'"
    assert job["environment"]["name"] == job["env"]["TARGET"] == "${{ " + mapping + " }}"
    for env in ("production", "staging", "development"):
        assert (REPO / "deploy" / "k8s" / "overlays" / env / "kustomization.yaml").is_file()
    text = run_text("deploy.yml")
    assert 'kubectl apply -k "deploy/k8s/overlays/$TARGET"' in text
    assert "rollout status deployment/plantdx-api" in text
    assert job["needs"] == "serve-image"
    # The image deployed is the one just built, pinned by its digest.
    assert "${{ needs.serve-image.outputs.digest }}" in yaml.safe_dump(job)


def test_deploy_builds_the_images_from_this_repository() -> None:
    built = [s["with"] for _, s in steps("deploy.yml") if s.get("uses", "").startswith("docker/build-push-action@")]
    assert {b["file"] for b in built} == {"deploy/docker/serve.Dockerfile", "deploy/docker/train.Dockerfile"}
    for b in built:
        assert (REPO / b["file"]).is_file() and b["context"] == "."
    variants = workflow("deploy.yml")["jobs"]["train-images"]["strategy"]["matrix"]["include"]
    assert {v["torch"] for v in variants} == {"cpu", "cu128"}


def test_the_model_workflow_runs_the_lifecycle_in_order() -> None:
    model = workflow("model.yml")
    assert set(model["on"]) == {"workflow_dispatch"}
    assert {"min_accuracy", "max_p99_ms", "config"} <= set(model["on"]["workflow_dispatch"]["inputs"])
    assert (REPO / model["on"]["workflow_dispatch"]["inputs"]["config"]["default"]).is_file()
    commands = [s["run"] for _, s in steps("model.yml") if "run" in s]
    order = ["plantdx train", "plantdx evaluate", "plantdx export", "plantdx bench", "benchmarks/gate.py",
             "plantdx register", "plantdx promote"]  # fmt: skip
    positions = [next(i for i, c in enumerate(commands) if word in c) for word in order]
    assert positions == sorted(positions), dict(zip(order, positions, strict=True))
    assert '--min-accuracy "$MIN_ACCURACY" --max-p99-ms "$MAX_P99_MS"' in run_text("model.yml")
    # Dispatch inputs are never pasted into a shell script (script injection).
    assert "${{ inputs." not in run_text("model.yml")


def _bench(bundle: Path, p99_ms: float | None) -> dict[str, Any]:
    return {"bundle": str(bundle), "results": [{"runtime": "onnxruntime-fp32", "p50_ms": 1.0, "p99_ms": p99_ms}]}


def _gate(tmp_path: Path, bench: dict[str, Any], *args: str) -> subprocess.CompletedProcess[str]:
    results = tmp_path / "model_runtimes.json"
    results.write_text(json.dumps(bench))
    cmd = [sys.executable, str(GATE), str(default_bundle_path()), str(results), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def test_the_gate_passes_the_bundled_model_on_its_own_card(tmp_path: Path) -> None:
    accuracy = json.loads((default_bundle_path() / "card.json").read_text())["metrics"]["test_accuracy"]
    proc = _gate(tmp_path, _bench(default_bundle_path(), 3.0), f"--min-accuracy={accuracy - 0.01}", "--max-p99-ms=5")
    assert proc.returncode == 0, proc.stderr
    assert "passed" in proc.stdout


def test_the_gate_refuses_a_slow_or_inaccurate_candidate_and_says_why(tmp_path: Path) -> None:
    accuracy = json.loads((default_bundle_path() / "card.json").read_text())["metrics"]["test_accuracy"]
    proc = _gate(tmp_path, _bench(default_bundle_path(), 9.0), f"--min-accuracy={accuracy + 0.001}", "--max-p99-ms=5")
    assert proc.returncode == 1
    assert f"test accuracy {accuracy:.4f} is below" in proc.stderr
    assert "p99 latency 9.00 ms is above 5.00 ms" in proc.stderr
    missing = _gate(tmp_path, _bench(default_bundle_path(), None), "--min-accuracy=0", "--max-p99-ms=5")
    assert missing.returncode == 1 and "no onnxruntime-fp32 latency" in missing.stderr


def test_the_gate_refuses_measurements_of_another_bundle(tmp_path: Path) -> None:
    proc = _gate(tmp_path, _bench(tmp_path / "other", 1.0), "--min-accuracy=0", "--max-p99-ms=5")
    assert proc.returncode == 2 and "not" in proc.stderr
