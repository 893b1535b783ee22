"""A farm's round with the project's Lightning module, without Flower: FedProx's pull, FedBN's own BatchNorm, the
DP exchange without integer counters, and the server's score."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import SMOKE
from plantdx.config import Settings, load_settings
from plantdx.data.split import Manifest, manifest_for, write_manifest
from plantdx.federate.training import (
    CentralScorer,
    FarmConfig,
    batchnorm_keys,
    create_module,
    recipe,
    state_arrays,
    train_locally,
)

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("clean_env")]


@pytest.fixture
def farm(tiny_dataset: Path, tmp_path: Path) -> tuple[Settings, dict[str, object], FarmConfig]:
    settings = load_settings(
        SMOKE, [f"dataset.root={tiny_dataset}", "dataset.max_per_class=null", "dataset.image_size=32"]
    )
    manifest = manifest_for(settings.dataset)
    path = write_manifest(Manifest(tuple(manifest.split("train"))), tmp_path / "farm.csv")
    return settings, recipe(settings, manifest.classes, 1), FarmConfig("farm-1", path, tuple(settings.dataset.root))


def distance(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    return float(sum(np.square(a[k] - b[k]).sum() for k in a if a[k].dtype.kind == "f") ** 0.5)


def test_fedprox_pulls_a_farm_towards_the_global_model(farm: tuple[Settings, dict[str, object], FarmConfig]) -> None:
    _, rec, config = farm
    start = state_arrays(create_module(rec).model)
    free = train_locally(rec, config, start, epochs=2, lr=0.01, mu=0.0, seed=1)
    pulled = train_locally(rec, config, start, epochs=2, lr=0.01, mu=10.0, seed=1)
    assert free.examples == pulled.examples == len(config.manifest.read_text().splitlines()) - 1
    assert distance(pulled.arrays, start) < distance(free.arrays, start)
    assert all(pulled.arrays[k].dtype == start[k].dtype for k in start)  # counters stay int64


def test_a_farm_trains_with_its_own_batchnorm_when_it_keeps_one(
    farm: tuple[Settings, dict[str, object], FarmConfig],
) -> None:
    _, rec, config = farm
    start = state_arrays(create_module(rec).model)
    bn = batchnorm_keys(create_module(rec).model)
    own = {k: (np.full_like(start[k], 7) if start[k].dtype.kind == "f" else start[k]) for k in bn}
    result = train_locally(rec, config, start, epochs=1, lr=1e-6, mu=0.0, seed=1, keep=own)
    mean = next(k for k in bn if k.endswith("running_mean"))
    assert result.batchnorm == bn
    assert abs(float(result.arrays[mean].mean()) - 7) < 1.5  # started from the farm's 7s, not the global 0s


def test_arrays_without_integer_counters_load_and_score(farm: tuple[Settings, dict[str, object], FarmConfig]) -> None:
    settings, rec, config = farm
    floats = {k: v for k, v in state_arrays(create_module(rec).model).items() if v.dtype.kind == "f"}
    result = train_locally(rec, config, floats, epochs=1, lr=0.01, mu=0.0, seed=1)
    assert set(result.arrays) == set(floats)  # what was sent comes back, nothing more
    scores = CentralScorer(rec, settings.dataset, manifest_for(settings.dataset).split("val")).score(result.arrays)
    assert 0 <= scores["acc"] <= 1 and 0 <= scores["f1_macro"] <= 1
