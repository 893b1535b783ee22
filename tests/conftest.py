"""Shared fixtures: tiny synthetic datasets (unit tests) and the real PlantVillage folder (integration tests)."""

from __future__ import annotations

import io
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from plantdx.config import DatasetConfig, Settings, default_data_root, load_settings
from plantdx.data.split import Manifest, manifest_for

if TYPE_CHECKING:
    from plantdx.export import ExportResult
    from plantdx.train import TrainResult

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "configs" / "smoke.yaml"
TINY_CLASSES = ("Crop___Blight", "Crop___Spot", "Crop___healthy")
_COLOURS = {"Crop___Blight": (150, 90, 40), "Crop___Spot": (60, 140, 60), "Crop___healthy": (40, 170, 90)}


def make_leaf(label: str, seed: int, size: int = 48) -> Image.Image:
    """A coloured square with noise and class-specific spots: learnable, and no two images alike."""
    rng = np.random.default_rng(seed)
    base = np.array(_COLOURS.get(label, (100, 100, 100)), dtype=np.float32)
    img = base + rng.normal(0, 12, (size, size, 3))
    if label.endswith("Spot"):
        for _ in range(6):
            y, x = rng.integers(4, size - 4, 2)
            img[y - 2 : y + 2, x - 2 : x + 2] = (30, 20, 10)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def write_tiny_dataset(root: Path, per_class: int = 12, size: int = 48) -> Path:
    for c, label in enumerate(TINY_CLASSES):
        folder = root / label
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            ext = "png" if i % 3 == 0 else "jpg"
            make_leaf(label, seed=c * 1000 + i, size=size).save(folder / f"img_{i:03d}.{ext}")
    return root


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_dataset(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def real_data() -> Path:
    root = default_data_root()
    if not root.is_dir():  # fail, not skip: a missing dataset must not turn the real-image tests green
        pytest.fail(
            f"real images not found at {root}: set PLANTDX_DATA, or leave these tests out with -m 'not realdata'"
        )
    return root


BUNDLED_RECIPE = Path(__file__).resolve().parents[1] / "configs" / "default_model_refit.yaml"


@pytest.fixture(scope="session")
def bundled_split() -> tuple[DatasetConfig, Manifest]:
    """The dataset and manifest the bundled model was trained and scored on: its recipe's split of every shared
    data root (lab, field, not-a-leaf). A missing root fails, never skips, like ``real_data``."""
    dataset = load_settings(BUNDLED_RECIPE).dataset
    domains = {r.domain for r in dataset.root if r.path.is_dir()}
    if domains != {"lab", "field", "nonleaf"}:
        pytest.fail(f"the bundled model's data roots are not all here ({dataset.root_keys}): set PLANTDX_DATA")
    return dataset, manifest_for(dataset)


def installed(program: str, install: str) -> str:
    """The path of a server binary the tests run for real; a missing one fails (CI installs it), never skips."""
    path = shutil.which(program)
    if path is None:
        pytest.fail(f"`{program}` is not on PATH: {install} (.ci/run does)")
    return path


@pytest.fixture
def tracking(tmp_path: Path) -> list[str]:
    """Overrides that send MLflow to a fresh SQLite store and artifact folder inside tmp_path."""
    return [
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
        f"tracking.artifact_location={tmp_path / 'mlartifacts'}",
        f"train.output_dir={tmp_path / 'runs'}",
    ]


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No PLANTDX_* variable leaks in from the shell, except the data location."""
    for key in list(os.environ):
        if key.startswith("PLANTDX_") and key != "PLANTDX_DATA":
            monkeypatch.delenv(key)


@pytest.fixture
def smoke_settings(tiny_dataset: Path, tracking: list[str], clean_env: None) -> Settings:  # noqa: ARG001
    return load_settings(SMOKE, [f"dataset.root={tiny_dataset}", "dataset.max_per_class=null", *tracking])


def _without_plantdx_env() -> pytest.MonkeyPatch:
    mp = pytest.MonkeyPatch()
    for key in list(os.environ):
        if key.startswith("PLANTDX_") and key != "PLANTDX_DATA":
            mp.delenv(key)
    return mp


@pytest.fixture(scope="session")
def trained_tiny(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, TrainResult]:
    """A plant_cnn trained for a few epochs on the tiny dataset, tracked in its own MLflow store (shared)."""
    from plantdx.train import train

    tmp = tmp_path_factory.mktemp("trained")
    mp = _without_plantdx_env()
    try:
        settings = load_settings(
            SMOKE,
            [
                f"dataset.root={tiny_dataset}",
                "dataset.max_per_class=null",
                "dataset.image_size=32",
                "train.max_epochs=4",
                "train.lr=0.01",
                f"train.output_dir={tmp / 'runs'}",
                f"tracking.uri=sqlite:///{tmp / 'mlflow.db'}",
                f"tracking.artifact_location={tmp / 'mlartifacts'}",
                "export.reference_images=20",
                "export.int8_calibration_images=20",
                "export.threads=1",
            ],
        )
        return settings, train(settings)
    finally:
        mp.undo()


@pytest.fixture(scope="session")
def exported(trained_tiny: tuple[Settings, TrainResult], tmp_path_factory: pytest.TempPathFactory) -> ExportResult:
    from plantdx.export import export

    settings, result = trained_tiny
    return export(settings, tmp_path_factory.mktemp("bundle") / "bundle", run_id=result.run_id)


_MONITOR_DIR = Path(tempfile.mkdtemp(prefix="plantdx-monitor-"))


def serve_settings(bundle: Path, *extra: str) -> Settings:
    """Service settings for in-process apps: each app gets its own prediction log, outside the checkout."""
    run = _MONITOR_DIR / uuid.uuid4().hex
    return load_settings(
        overrides=[
            f"serve.model={bundle}",
            "serve.log_level=WARNING",
            f"monitor.log_url=sqlite:///{run}/predictions.db",
            f"monitor.report_dir={run}/reports",
            *extra,
        ]
    )


def jpeg(label: str = "Crop___Spot", seed: int = 1, size: int = 48) -> bytes:
    buf = io.BytesIO()
    make_leaf(label, seed, size).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.fixture
def client(exported: ExportResult, clean_env: None) -> Iterator[TestClient]:  # noqa: ARG001
    from plantdx.serve import create_app

    with TestClient(create_app(serve_settings(exported.bundle))) as c:
        yield c


TOKEN = "test-admin-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_port_below_ephemeral() -> int:
    """For a port that a child process binds only seconds later (a DDP rendezvous): one in the kernel's ephemeral
    range could meanwhile be handed to an outgoing connection, even to a retrying client of that very port, which
    then connects to itself."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    if low <= 2048:  # (almost) every port is ephemeral here
        return free_port()
    for _ in range(100):
        port = random.randrange(max(1024, low - 10000), low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port below {low}")


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    url: str
    log: Path


def start_server(bundle: Path, tmp_path: Path, *extra: str, port: int | None = None) -> Server:
    """A real ``plantdx serve`` process on ``port`` (a free one by default; the same one again to restart a server
    a page has cached, since the page's origin includes the port)."""
    port = port or free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLANTDX_")}
    env["PLANTDX_ADMIN_TOKEN"] = TOKEN
    log = tmp_path / "server.log"
    cmd = [sys.executable, "-m", "plantdx.cli", "serve", "--port", str(port), "--model", str(bundle),
           "--set", "serve.drain_timeout_s=15", "--set", "serve.rate_limit=100000/minute", *extra]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return Server(proc, url, log)
        except httpx.TransportError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"server did not become ready:\n{log.read_text()[-3000:]}")
