"""What the serve image contains, proved without a Docker engine.

The serve image builds the wheel from the source and installs it with the serve extra only. This test does the same
in a clean venv (no system site-packages, nothing cached outside tmp), checks torch stayed out, and has that venv
serve real leaves with the bundled model over HTTP.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import httpx
import pytest

from conftest import REPO, free_port

pytestmark = [pytest.mark.slow, pytest.mark.realdata]


def _run(cmd: list[str], env: dict[str, str], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _clean_env(tmp: Path) -> dict[str, str]:
    """The shell's environment without plantdx settings, PYTHONPATH or a venv, and pip caching only into tmp."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PLANTDX_", "PYTHON", "VIRTUAL_ENV")) or k == "PLANTDX_DATA"
    }
    env["PIP_CACHE_DIR"] = str(tmp / "pip-cache")
    env["DO_NOT_TRACK"] = "1"
    return env


def build_wheel(tmp: Path, env: dict[str, str]) -> Path:
    """``python -m build --wheel`` on a copy of the sources, so the checkout gets no build/ or egg-info."""
    src = tmp / "src-copy"
    shutil.copytree(REPO / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    _run([sys.executable, "-m", "build", "--wheel", "--outdir", str(tmp / "dist"), str(src)], env, tmp, 600)
    (wheel,) = (tmp / "dist").glob("plantdx-*.whl")
    return wheel


def healthcheck_command(python: Path) -> list[str]:
    """The serve image's HEALTHCHECK (exec form), run with the given interpreter."""
    text = re.sub(r"\\\n", " ", (REPO / "deploy" / "docker" / "serve.Dockerfile").read_text())
    (line,) = [x for x in text.splitlines() if x.startswith("HEALTHCHECK")]
    command = json.loads(line.split(" CMD ", 1)[1])
    assert command[0] == "python"
    return [str(python), *command[1:]]


def one_image_per_class(root: Path) -> dict[str, Path]:
    """The first photo (by name) of each class folder: a fixed, reviewable pick."""
    picks = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        images = sorted(folder.glob("*.jpg")) + sorted(folder.glob("*.JPG"))
        if images:
            picks[folder.name] = images[0]
    return picks


def test_the_wheel_installs_without_torch_and_serves_real_leaves(real_data: Path, tmp_path: Path) -> None:
    env = _clean_env(tmp_path)
    timings: dict[str, float] = {}

    started = time.monotonic()
    wheel = build_wheel(tmp_path, env)
    timings["build"] = time.monotonic() - started
    names = set(zipfile.ZipFile(wheel).namelist())
    for shipped in ("model.onnx", "labels.json", "preprocess.json", "card.json"):
        assert f"plantdx/default_bundle/{shipped}" in names, f"the wheel lacks default_bundle/{shipped}"
    assert "plantdx/serve/static/index.html" in names, "the wheel lacks the web page"

    venv = tmp_path / "venv"
    started = time.monotonic()
    _run([sys.executable, "-m", "venv", str(venv)], env, tmp_path, 120)
    python = venv / "bin" / "python"
    _run([str(python), "-m", "pip", "install", "-q", f"{wheel}[serve]"], env, tmp_path, 900)
    timings["install"] = time.monotonic() - started

    probe = (
        "import importlib.util, json, plantdx; "
        "print(json.dumps({'file': plantdx.__file__, "
        "'heavy': [m for m in ('torch', 'lightning', 'torchvision', 'timm') if importlib.util.find_spec(m)]}))"
    )
    found = json.loads(_run([str(python), "-c", probe], env, tmp_path, 60).stdout)
    assert found["heavy"] == [], f"the serve extra pulled in {found['heavy']}"
    assert Path(found["file"]).is_relative_to(venv), f"plantdx was imported from {found['file']}, not the wheel"

    port = free_port()
    serve_env = env | {
        "PLANTDX_MONITOR__LOG_URL": f"sqlite:///{tmp_path / 'predictions.db'}",
        "PLANTDX_MONITOR__REPORT_DIR": str(tmp_path / "monitoring"),
        "PLANTDX_SERVE__LOG_LEVEL": "WARNING",
    }
    check, health_env = healthcheck_command(python), env | {"PLANTDX_SERVE__PORT": str(port)}
    log = tmp_path / "server.log"
    cmd = [str(venv / "bin" / "plantdx"), "serve", "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=serve_env, cwd=tmp_path)
    url = f"http://127.0.0.1:{port}"
    try:
        started = time.monotonic()
        _wait_ready(url, proc, log)
        timings["ready"] = time.monotonic() - started
        # The image's HEALTHCHECK passes against the live service (and fails once it is gone, below).
        assert subprocess.run(check, env=health_env, capture_output=True, timeout=30).returncode == 0

        answers = {}
        with httpx.Client(timeout=30) as client:
            for label, image in one_image_per_class(real_data).items():
                r = client.post(f"{url}/v1/predict", files={"file": (image.name, image.read_bytes(), "image/jpeg")})
                assert r.status_code == 200, r.text
                answers[label] = r.json()["prediction"]
            model = client.get(f"{url}/v1/model").json()
        assert len(answers) == 15
        wrong = {label: said for label, said in answers.items() if said != label}
        assert len(wrong) <= 1, f"the wheel's service misnamed {wrong}"
        assert model["architecture"] == "efficientnet_lite0" and model["classes"][-1] == "not_a_leaf"
        assert len(model["classes"]) == 16 and model["reject_label"] == "not_a_leaf"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    # the serve extra is enough for monitoring too: every prediction reached the SQLite prediction log
    with sqlite3.connect(tmp_path / "predictions.db") as db:
        assert db.execute("SELECT COUNT(*), COUNT(brightness) FROM predictions").fetchone() == (15, 15)
    assert subprocess.run(check, env=health_env, capture_output=True, timeout=30).returncode != 0
    print(f"wheel test timings (s): {timings}")  # noqa: T201 - read with -s when sizing CI


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.3)
    proc.kill()
    pytest.fail(f"the wheel's server did not become ready:\n{log.read_text()[-3000:]}")
