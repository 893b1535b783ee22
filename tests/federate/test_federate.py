"""Federated runs with real Flower processes: a SuperLink and one SuperNode per farm on loopback ports, started from
the Flower environment (``make install`` makes ``.venv-flwr``), on tiny synthetic leaves at 32 px.

Each test checks that nothing it started outlives it, and a failing assertion shows the processes' logs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from conftest import REPO, SMOKE
from plantdx.config import Settings, load_settings
from plantdx.federate.run import FederateError, federate
from plantdx.registry import Registry

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("clean_env")]

FLOWER_ENV = REPO / ".venv-flwr"
CROPS = {"Pepper___Spot": (60, 140, 60), "Potato___Blight": (150, 90, 40), "Tomato___healthy": (40, 170, 90)}
CROPS |= {"Tomato___Spot": (90, 150, 50)}


def crop_leaf(label: str, seed: int, size: int = 40) -> Image.Image:
    """A learnable leaf: the class's colour, noise, and dark spots on the spotted classes."""
    rng = np.random.default_rng(seed)
    img = np.array(CROPS[label], dtype=np.float32) + rng.normal(0, 10, (size, size, 3))
    if label.endswith("Spot"):
        for _ in range(6):
            y, x = rng.integers(4, size - 4, 2)
            img[y - 2 : y + 2, x - 2 : x + 2] = (30, 20, 10)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


@pytest.fixture(scope="session")
def crop_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four classes of three crops (pepper, potato, tomato), 12 photos each."""
    root = tmp_path_factory.mktemp("crops")
    for c, label in enumerate(CROPS):
        (root / label).mkdir()
        for i in range(12):
            crop_leaf(label, c * 100 + i).save(root / label / f"leaf_{i:02d}.jpg")
    return root


@pytest.fixture(scope="session")
def flower_env() -> Path:
    if not (FLOWER_ENV / "bin" / "flower-superlink").is_file():  # fail, not skip: CI must have it
        pytest.fail(f"no Flower environment at {FLOWER_ENV}: `make install` (or `make flower-env`) makes it")
    return FLOWER_ENV


def fed_settings(data: Path, tmp: Path, env: Path, *extra: str) -> Settings:
    return load_settings(
        SMOKE,
        [
            f"dataset.root={data}",
            "dataset.max_per_class=null",
            "dataset.image_size=32",
            "train.lr=0.01",
            f"train.output_dir={tmp / 'runs'}",
            f"tracking.uri=sqlite:///{tmp / 'mlflow.db'}",
            f"tracking.artifact_location={tmp / 'mlartifacts'}",
            "export.reference_images=20",
            "export.int8=false",
            "export.torchscript=false",
            "export.robustness=false",
            "export.threads=1",
            f"federate.flower_env={env}",
            "federate.local_epochs=3",
            "federate.round_timeout_s=120",
            "federate.deadline_s=400",
            *extra,
        ],
    )


def flower_processes(tmp: Path) -> list[int]:
    """Processes whose environment points into ``tmp`` (every Flower process of a run there has FLWR_HOME in it)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if str(tmp).encode() in (proc / "environ").read_bytes():
                found.append(int(proc.name))
        except OSError:
            continue
    return found


@contextmanager
def logs_on_failure(tmp: Path) -> Iterator[None]:
    """A failing check shows every Flower process's log, and nothing the run started may outlive it."""
    try:
        yield
    except AssertionError as exc:
        logs = "\n".join(
            f"--- {p} ---\n{p.read_text(errors='replace')[-3000:]}" for p in sorted(tmp.glob("runs/*/logs/*.log"))
        )
        raise AssertionError(f"{exc}\n{logs}") from None
    finally:
        left = flower_processes(tmp)
        assert not left, f"processes of the run still alive: {left}"


def registry(settings: Settings) -> Registry:
    return Registry(settings.tracking, settings.gate)


def test_federate_cli_runs_crop_farms_and_registers_through_the_gate(
    crop_dataset: Path, flower_env: Path, tmp_path: Path
) -> None:
    """The issue's command at test size: three farms, one per crop, on real Flower processes; the global model is
    exported, registered as challenger and offered to the gate, which holds it to the champion's test split."""
    from plantdx.cli import app
    from plantdx.export import export
    from plantdx.registry import CHALLENGER, CHAMPION
    from plantdx.train import train

    overrides = [
        f"dataset.root={crop_dataset}",
        "dataset.max_per_class=null",
        "dataset.image_size=32",
        "train.lr=0.01",
        "train.max_epochs=3",
        f"train.output_dir={tmp_path / 'runs'}",
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
        f"tracking.artifact_location={tmp_path / 'mlartifacts'}",
        "export.reference_images=20",
        "export.int8=false",
        "export.torchscript=false",
        "export.robustness=false",
        "export.threads=1",
    ]
    settings = load_settings(SMOKE, overrides)
    central = train(settings)  # the champion: central training on the same split
    bundle = export(settings, tmp_path / "central", run_id=central.run_id).bundle
    champion = registry(settings).register(bundle, run_id=central.run_id)
    registry(settings).promote(champion.version, force=True)

    args = ["federate", "-c", str(SMOKE), "--clients", "3", "--partition", "crop", "--rounds", "2"]
    for item in [*overrides, f"federate.flower_env={flower_env}", "federate.local_epochs=2", "gate.margin=1.0"]:
        args += ["--set", item]
    with logs_on_failure(tmp_path):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        assert "round 2: val acc" in result.output
        assert "3 accepted, 0 rejected, 0 failed" in result.output
        run_dir = next((tmp_path / "runs").glob("federate-*"))
        rounds = [json.loads(line) for line in (run_dir / "rounds.jsonl").read_text().splitlines()]
        assert [r["round"] for r in rounds] == [0, 1, 2] and all(r["valid"] for r in rounds)
        assert {a["farm"] for a in rounds[1]["accepted"]} == {"farm-1", "farm-2", "farm-3"}
        assert all(0 <= r["val_acc"] <= 1 and 0 <= r["val_f1_macro"] <= 1 for r in rounds)
        assert rounds[1]["bytes_sent"] == rounds[1]["bytes_received"] > 0
        assert all(a["startup-s"] > 0 and a["import-s"] > 0 and a["update-norm"] > 0 for a in rounds[1]["accepted"])
        partition = json.loads((run_dir / "partition" / "partition.json").read_text())
        assert sorted(f["description"] for f in partition["farms"]) == ["Pepper", "Potato", "Tomato"]
        state = torch.load(run_dir / "global.pt", weights_only=True)
        counters = [v for k, v in state.items() if k.endswith("num_batches_tracked")]
        assert counters and all(c.dtype == torch.int64 and int(c) > 0 for c in counters)

        reg = registry(settings)
        fed = reg.by_alias(CHALLENGER)
        assert fed is not None and fed.version != champion.version
        card = json.loads((run_dir / "bundle" / "card.json").read_text())
        assert card["federated"]["partition"] == "crop" and card["federated"]["valid_rounds"] == 2
        assert card["federated"]["engine"].startswith("Flower 1.42")
        assert f"registered v{fed.version} as challenger; not promoted" in result.output
        assert "by the required margin 1.0" in result.output  # the gate's reason, as the CLI printed it
        assert "test split" not in result.output  # federated and central models are scored on the same photos
        assert reg.by_alias(CHAMPION).version == champion.version  # type: ignore[union-attr]

        from mlflow import MlflowClient

        client = MlflowClient(settings.tracking.uri)
        history = client.get_metric_history(fed.run_id, "val/acc")  # type: ignore[arg-type]
        assert sorted(m.step for m in history) == [0, 1, 2]
        assert client.get_metric_history(fed.run_id, "federate/bytes_received")  # type: ignore[arg-type]


def test_a_poisoned_farm_is_rejected_and_too_few_valid_rounds_are_not_registered(
    tiny_dataset: Path, flower_env: Path, tmp_path: Path
) -> None:
    """One farm sends NaN, one sends weights scaled a thousandfold: the guard names both and why; the one honest
    reply is below min_replies, so the round does not count and the run is not registered."""
    settings = fed_settings(
        tiny_dataset,
        tmp_path,
        flower_env,
        "federate.clients=3",
        "federate.rounds=1",
        "federate.min_replies=2",
        'federate.drills={"farm-2": "nan", "farm-3": "scale"}',
    )
    with logs_on_failure(tmp_path):
        result = federate(settings)
        (entry,) = [r for r in result.rounds if r["round"] == 1]
        reasons = {r["farm"]: r["reason"] for r in entry["rejected"]}
        assert "NaN or infinite" in reasons["farm-2"], reasons
        assert "norm is" in reasons["farm-3"] and "global model's" in reasons["farm-3"], reasons
        assert [a["farm"] for a in entry["accepted"]] == ["farm-1"]
        assert entry["valid"] is False and result.valid_rounds == 0
        assert not result.registered and "not registered" in result.reasons[0]
        assert registry(settings).versions() == []
        assert (result.run_dir / "logs" / "superlink.log").read_text()
        assert result.pids and not flower_processes(tmp_path)


def test_a_farm_that_crashes_mid_run_is_left_out_and_the_round_completes(
    tiny_dataset: Path, flower_env: Path, tmp_path: Path
) -> None:
    """Farm 3's whole SuperNode dies in round 2: that round ends at the timeout with the two others and counts."""
    settings = fed_settings(
        tiny_dataset,
        tmp_path,
        flower_env,
        "federate.clients=3",
        "federate.rounds=2",
        "federate.min_replies=2",
        "federate.round_timeout_s=60",
        "federate.register_model=false",
        'federate.drills={"farm-3": "crash@2"}',
    )
    with logs_on_failure(tmp_path):
        result = federate(settings)
        one, two = (r for r in result.rounds if r["round"] > 0)
        assert len(one["accepted"]) == 3
        assert sorted(a["farm"] for a in two["accepted"]) == ["farm-1", "farm-2"]
        farm3 = next(a["node"] for a in one["accepted"] if a["farm"] == "farm-3")
        # silent until the timeout, or reported unavailable by Flower once its heartbeat lapsed, whichever comes first
        assert [f["node"] for f in two["failed"]] == [farm3], two["failed"]
        assert two["valid"] and result.valid_rounds == 2


def test_the_deadline_stops_everything_the_run_started(tiny_dataset: Path, flower_env: Path, tmp_path: Path) -> None:
    settings = fed_settings(
        tiny_dataset,
        tmp_path,
        flower_env,
        "federate.clients=2",
        "federate.deadline_s=45",
        'federate.drills={"farm-2": "hang@1"}',
    )
    with logs_on_failure(tmp_path):
        with pytest.raises(FederateError, match="deadline of 45 s after 0 rounds") as failure:
            federate(settings)
        assert "--- superlink" in str(failure.value) and "--- farm-2" in str(failure.value)  # with the logs


def test_farms_join_a_superlink_that_was_already_running(tiny_dataset: Path, flower_env: Path, tmp_path: Path) -> None:
    """``federate.superlink``: plantdx starts nothing but ``flwr run``; the SuperLink and the farms' SuperNodes (each
    with its own node configuration, as a farm would write it) were started by someone else."""
    from plantdx.data.split import manifest_for
    from plantdx.federate.partition import make_partition, write_partition
    from plantdx.federate.run import flower_environment, free_port, processes, write_node_config

    settings = fed_settings(
        tiny_dataset, tmp_path, flower_env, "federate.clients=2", "federate.rounds=1", "federate.register_model=false"
    )
    partition = make_partition(manifest_for(settings.dataset), "iid", 2)
    write_partition(partition, tmp_path / "farms")
    port = free_port()
    roots = json.dumps([r.model_dump(mode="json") for r in settings.dataset.root])
    with (
        logs_on_failure(tmp_path),
        processes(tmp_path / "runs" / "outside" / "logs", flower_environment(flower_env, tmp_path / "home")) as outside,
    ):
        link = [str(flower_env / "bin" / "flower-superlink"), "--insecure", "--host=127.0.0.1", f"--port={port}"]
        outside.start("superlink", [*link, "--disable-runtime-dependency-installation"])
        for farm in partition.farms:
            node_config = write_node_config(
                tmp_path / "farms" / f"{farm.name}.toml",
                {"name": farm.name, "manifest": str(tmp_path / "farms" / f"{farm.name}.csv"), "roots": roots},
            )
            node = [str(flower_env / "bin" / "flower-supernode"), "--insecure", f"--superlink=127.0.0.1:{port}"]
            outside.start(farm.name, [*node, f"--port={free_port()}", "--node-config", str(node_config)])
        result = federate(
            settings.model_copy(
                update={"federate": settings.federate.model_copy(update={"superlink": f"127.0.0.1:{port}"})}
            )
        )
        assert result.partition is None and result.valid_rounds == 1
        assert sorted(a["farm"] for a in result.rounds[1]["accepted"]) == ["farm-1", "farm-2"]
        assert set(result.pids) == {"flwr-run"}  # it started nothing else
        assert all(p.poll() is None for p in outside.started.values())  # and stopped nothing it did not start
