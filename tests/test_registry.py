"""The registry round trip on the embedded SQLite store and on a live `mlflow server`."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from plantdx.bundle import load_bundle, write_card
from plantdx.config import GateConfig, TrackingConfig
from plantdx.export import ExportResult
from plantdx.registry import CHALLENGER, CHAMPION, PromotionRefusedError, Registry

pytestmark = pytest.mark.slow


def variant(exported: ExportResult, folder: Path, accuracy: float, f1: float, per_class_drop: float = 0.0) -> Path:
    """A copy of the exported bundle whose card claims other test scores (re-carded, so it verifies)."""
    copy = Path(shutil.copytree(exported.bundle, folder))
    card = json.loads((copy / "card.json").read_text())
    card["metrics"]["test_accuracy"] = accuracy
    card["metrics"]["test_f1_macro"] = f1
    per_class = card["metrics"]["test_f1_per_class"]
    first = sorted(per_class)[0]
    card["metrics"]["test_f1_per_class"] = {c: (v - per_class_drop if c == first else v) for c, v in per_class.items()}
    card.pop("files")
    write_card(copy, card)
    return copy


def round_trip(registry: Registry, exported: ExportResult, tmp_path: Path) -> None:
    base = variant(exported, tmp_path / "base", 0.90, 0.90)
    v1 = registry.register(base, git_commit="abc123")
    assert v1.version == "1" and CHALLENGER in v1.aliases
    # the commit that trained it (the card's, from the run), not the one registering it
    assert v1.tags["git_commit"] == exported.card.get("git_commit", "abc123") and v1.tags["parity_passed"] == "true"
    assert v1.tags["data_hash"] == exported.card["data"]["manifest_sha256"]
    assert float(v1.tags["test_f1_macro"]) == 0.90

    registry.promote()  # no champion yet: the gate only checks parity and metrics exist
    assert registry.by_alias(CHAMPION).version == "1"  # type: ignore[union-attr]

    worse = registry.register(variant(exported, tmp_path / "worse", 0.85, 0.85))
    with pytest.raises(PromotionRefusedError, match=r"test_f1_macro 0\.8500 does not beat champion v1's 0\.9000"):
        registry.promote(worse.version)
    assert registry.by_alias(CHAMPION).version == "1"  # type: ignore[union-attr]

    one_class_worse = registry.register(variant(exported, tmp_path / "uneven", 0.95, 0.95, per_class_drop=0.1))
    with pytest.raises(PromotionRefusedError, match="F1 drops by 0.1000"):
        registry.promote(one_class_worse.version)

    better = registry.register(variant(exported, tmp_path / "better", 0.95, 0.95))
    result = registry.promote(better.version)
    assert result.accepted and registry.by_alias(CHAMPION).version == better.version  # type: ignore[union-attr]
    tie = registry.register(variant(exported, tmp_path / "tie", 0.95, 0.95))
    with pytest.raises(PromotionRefusedError, match=r"0\.9500 does not beat champion v\d+'s 0\.9500"):
        registry.promote(tie.version)  # "beats": equal is not enough, even with a margin of 0

    forced = registry.promote(worse.version, force=True)
    assert not forced.accepted
    assert "does not beat" in registry.get(worse.version).tags["forced_promotion"]
    assert registry.by_alias(CHAMPION).version == worse.version  # type: ignore[union-attr]

    assert registry.rollback().version == better.version
    assert registry.by_alias(CHAMPION).version == better.version  # type: ignore[union-attr]
    assert registry.promote(better.version).checks == {"already_champion": True}  # a no-op, not a history entry
    assert registry.rollback().version == "1"  # back past v(better) to the champion before it

    # Registering another bundle from the same run leaves the earlier version's files alone.
    again = registry.register(variant(exported, tmp_path / "again", 0.99, 0.99), run_id=v1.run_id)
    assert registry.resolve("1", cache_dir=tmp_path / "c1").card["metrics"]["test_f1_macro"] == 0.90
    assert registry.resolve(again.version, cache_dir=tmp_path / "c2").card["metrics"]["test_f1_macro"] == 0.99
    registry.promote(better.version)

    bundle = registry.resolve(CHAMPION, cache_dir=tmp_path / "cache")
    assert bundle.card["metrics"]["test_f1_macro"] == 0.95
    assert bundle.labels == load_bundle(exported.bundle).labels
    assert (bundle.path / "model.onnx").read_bytes() == (exported.bundle / "model.onnx").read_bytes()


def test_registry_round_trip_on_sqlite(exported: ExportResult, tmp_path: Path) -> None:
    tracking = TrackingConfig(uri=f"sqlite:///{tmp_path / 'reg.db'}", artifact_location=str(tmp_path / "art"))
    round_trip(Registry(tracking, GateConfig()), exported, tmp_path)


def test_nothing_to_promote_or_roll_back(tmp_path: Path) -> None:
    registry = Registry(TrackingConfig(uri=f"sqlite:///{tmp_path / 'empty.db'}", artifact_location=str(tmp_path)))
    with pytest.raises(PromotionRefusedError, match="no challenger"):
        registry.promote()
    with pytest.raises(PromotionRefusedError, match="no champion to roll back from"):
        registry.rollback()  # the model is not even registered: a refusal, not an MLflow traceback


def test_a_rolled_back_version_is_not_promoted_again_by_a_plain_promote(exported: ExportResult, tmp_path: Path) -> None:
    tracking = TrackingConfig(uri=f"sqlite:///{tmp_path / 'reg.db'}", artifact_location=str(tmp_path / "art"))
    registry = Registry(tracking, GateConfig())
    registry.register(variant(exported, tmp_path / "v1", 0.90, 0.90))
    registry.promote()
    v2 = registry.register(variant(exported, tmp_path / "v2", 0.95, 0.95))
    registry.promote()
    assert registry.by_alias(CHAMPION).version == v2.version  # type: ignore[union-attr]
    assert registry.rollback().version == "1"
    assert registry.by_alias(CHALLENGER) is None  # v2 was the challenger; it is not any more
    with pytest.raises(PromotionRefusedError, match="no challenger"):
        registry.promote()  # would otherwise put v2 straight back: it beats v1
    assert registry.by_alias(CHAMPION).version == "1"  # type: ignore[union-attr]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `mlflow server` on loopback: SQLite backend, proxied artifact store, job execution off."""
    tmp = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    cmd = [
        str(Path(sys.executable).parent / "mlflow"), "server",
        "--backend-store-uri", f"sqlite:///{tmp / 'server.db'}",
        "--artifacts-destination", str(tmp / "artifacts"),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    log = (tmp / "server.log").open("w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {(tmp / 'server.log').read_text()[-2000:]}") from None
            time.sleep(0.5)
    else:
        proc.terminate()
        raise RuntimeError(f"mlflow server did not become healthy in 120 s: {(tmp / 'server.log').read_text()[-2000:]}")
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def test_registry_round_trip_on_a_live_mlflow_server(
    exported: ExportResult, mlflow_server: str, tmp_path: Path
) -> None:
    tracking = TrackingConfig(uri=mlflow_server, experiment="plantdx-server-test")
    round_trip(Registry(tracking, GateConfig()), exported, tmp_path)


def test_one_rule_reads_a_models_uri() -> None:
    from plantdx.registry import parse_model_uri

    assert parse_model_uri("models:/plantdx@challenger") == ("plantdx", "challenger")
    assert parse_model_uri("models:/plantdx/3") == ("plantdx", "3")
    assert parse_model_uri("models:/plantdx") == ("plantdx", "champion")
    assert parse_model_uri("models:/plantdx@") == ("plantdx", "champion")


def test_the_gate_fails_closed(exported: ExportResult, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A registry it cannot read, a card without the metric, or a lenient gate: never a silent promotion."""
    from mlflow.exceptions import MlflowException

    from plantdx.errors import TrackingError

    tracking = TrackingConfig(uri=f"sqlite:///{tmp_path / 'reg.db'}", artifact_location=str(tmp_path / "art"))
    registry = Registry(tracking, GateConfig())
    registry.register(variant(exported, tmp_path / "v1", 0.90, 0.90))
    registry.promote()
    worse = registry.register(variant(exported, tmp_path / "v2", 0.50, 0.50))

    # Reading the champion fails (a timeout, a 5xx): that is an error, not "there is no champion to beat".
    real = registry.client.get_model_version_by_alias

    def flaky(name: str, alias: str) -> object:
        if alias == CHAMPION:
            raise MlflowException("HTTPConnectionPool: Read timed out", error_code="TEMPORARILY_UNAVAILABLE")
        return real(name, alias)

    monkeypatch.setattr(registry.client, "get_model_version_by_alias", flaky)
    with pytest.raises(TrackingError, match="cannot read alias 'champion'.*Read timed out"):
        registry.promote(worse.version)
    monkeypatch.undo()
    assert registry.by_alias(CHAMPION).version == "1"  # type: ignore[union-attr]

    # A card without the metric: the tag is left out (not "None"), and the gate says so rather than crashing.
    bare = Path(shutil.copytree(exported.bundle, tmp_path / "bare"))
    card = json.loads((bare / "card.json").read_text())
    del card["metrics"]["test_f1_macro"]
    card.pop("files")
    write_card(bare, card)
    unscored = registry.register(bare)
    assert "test_f1_macro" not in unscored.tags
    with pytest.raises(PromotionRefusedError, match="it has no test_f1_macro tag"):
        registry.promote(unscored.version)

    # The gate a promotion passed is on record, so a loosened one is as visible as --force.
    lenient = Registry(tracking, GateConfig(max_class_drop=1.0))
    better = lenient.register(variant(exported, tmp_path / "v3", 0.95, 0.95, per_class_drop=0.5))
    lenient.promote(better.version)
    gate = json.loads(lenient.get(better.version).tags["promotion_gate"])
    assert gate == {"metric": "test_f1_macro", "margin": 0.0, "max_class_drop": 1.0, "over": "1"}
    with pytest.raises(ValueError, match="max_class_drop"):
        GateConfig(max_class_drop=-0.1)


def test_a_version_is_tagged_with_the_commit_that_trained_it(exported: ExportResult, tmp_path: Path) -> None:
    tracking = TrackingConfig(uri=f"sqlite:///{tmp_path / 'reg.db'}", artifact_location=str(tmp_path / "art"))
    registry = Registry(tracking, GateConfig())
    copy = Path(shutil.copytree(exported.bundle, tmp_path / "b"))
    card = json.loads((copy / "card.json").read_text())
    card["git_commit"] = "trained-at-this-commit"
    card.pop("files")
    write_card(copy, card)
    assert registry.register(copy, git_commit="checked-out-now").tags["git_commit"] == "trained-at-this-commit"
