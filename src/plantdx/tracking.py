"""MLflow tracking helpers that every stage shares: metric names, the git commit, where artifacts go, the experiment.

No torch or Lightning here, and mlflow only inside the functions that need it: ``plantdx register`` and the
registry import this without paying for either.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

from plantdx.config import TrackingConfig


def metric_name(name: str) -> str:
    """MLflow metric names allow letters, digits, ``_ - . / `` and space: PlantVillage's ``Corn_(maize)`` or
    ``Pepper,_bell`` do not pass as they are."""
    return re.sub(r"[^\w\-./ ]", "_", name)


def git_commit() -> str:
    """The commit of the plantdx source in use, or "unknown" outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
            cwd=Path(__file__).resolve().parent,
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def local_artifact_uri(tracking: TrackingConfig) -> str | None:
    """Artifact root for new experiments on an embedded store; a server chooses its own."""
    if tracking.artifact_location is None or tracking.uri.startswith(("http://", "https://", "databricks")):
        return None
    if "://" in tracking.artifact_location:
        return tracking.artifact_location
    return Path(tracking.artifact_location).resolve().as_uri()


def experiment_id(client: Any, tracking: TrackingConfig) -> str:
    """The configured experiment's id, created (with the local artifact root) on first use. ``client`` is an
    ``mlflow.MlflowClient`` on ``tracking.uri``."""
    experiment = client.get_experiment_by_name(tracking.experiment)
    if experiment is not None:
        return str(experiment.experiment_id)
    return str(client.create_experiment(tracking.experiment, local_artifact_uri(tracking)))
