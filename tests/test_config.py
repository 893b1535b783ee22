from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from plantdx.config import DataRoot, DatasetConfig, Settings, load_settings, parse_overrides
from plantdx.errors import ConfigError, DataError

pytestmark = pytest.mark.usefixtures("clean_env")


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_defaults_need_no_file() -> None:
    settings = load_settings()
    assert settings.model.name == "mobilenet_v3_small"
    assert settings.tracking.uri == "sqlite:///mlflow.db"
    assert (settings.dataset.val_fraction, settings.dataset.test_fraction) == (0.15, 0.15)


def test_precedence_defaults_yaml_env_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = write(tmp_path / "c.yaml", "train:\n  lr: 0.1\n  max_epochs: 7\nmodel:\n  name: resnet50\n")
    s = load_settings(cfg)
    assert (s.train.lr, s.train.max_epochs, s.model.name) == (0.1, 7, "resnet50")
    assert s.train.weight_decay == Settings().train.weight_decay  # untouched default survives the merge

    monkeypatch.setenv("PLANTDX_TRAIN__LR", "0.2")
    s = load_settings(cfg)
    assert (s.train.lr, s.train.max_epochs) == (0.2, 7)  # env beats YAML, YAML keeps the rest

    s = load_settings(cfg, ["train.lr=0.3"])
    assert (s.train.lr, s.train.max_epochs, s.model.name) == (0.3, 7, "resnet50")  # CLI beats env


def test_plantdx_data_sets_the_dataset_roots(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PLANTDX_DATA", str(tmp_path))
    assert load_settings().dataset.root == [DataRoot(path=tmp_path, domain="lab")]
    monkeypatch.setenv("PLANTDX_DATA", f"{tmp_path}/lab:field={tmp_path}/field:nonleaf={tmp_path}/other")
    roots = load_settings().dataset.root
    assert [(r.key, r.domain) for r in roots] == [("lab", "lab"), ("field", "field"), ("other", "nonleaf")]


def test_roots_come_as_a_path_a_list_or_mappings_and_need_distinct_names(tmp_path: Path) -> None:
    one = load_settings(overrides=[f"dataset.root={tmp_path}"]).dataset
    assert one.root == [DataRoot(path=tmp_path)] and one.root_path("") == tmp_path
    many = load_settings(overrides=[f'dataset.root=["{tmp_path}/a", "field={tmp_path}/b"]']).dataset
    assert many.root_path("b") == tmp_path / "b" and many.locate("a", "X___y/1.jpg") == tmp_path / "a/X___y/1.jpg"
    assert many.locate("a", "/elsewhere/feedback.jpg") == Path("/elsewhere/feedback.jpg")
    with pytest.raises(DataError, match="root 'c', which dataset.root does not configure"):
        many.root_path("c")
    mapped = DatasetConfig(root=[{"path": tmp_path / "a", "domain": "field", "name": "mine", "test_fraction": 0.3}])
    assert mapped.root[0].key == "mine" and mapped.root[0].test_fraction == 0.3
    with pytest.raises(ConfigError, match="two roots share a name"):
        load_settings(overrides=[f'dataset.root=["{tmp_path}/a", "{tmp_path}/x/a"]'])


def test_overrides_parse_yaml_scalars() -> None:
    assert parse_overrides(["a.b=1", "a.c=0.5", "d=true", "e=[1, 2]", "f=text", "g="]) == {
        "a": {"b": 1, "c": 0.5},
        "d": True,
        "e": [1, 2],
        "f": "text",
        "g": None,
    }
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["novalue"])


@pytest.mark.parametrize(
    ("yaml_text", "overrides", "message"),
    [
        ("train:\n  lrr: 0.1\n", [], "unknown key 'train.lrr'"),
        ("", ["trian.lr=0.1"], "unknown key 'trian'"),
        ("train:\n  max_epochs: many\n", [], "train.max_epochs"),
        ("", ["dataset.val_fraction=0.5", "dataset.test_fraction=0.45"], "at least 10% for training"),
        ("- a\n- b\n", [], "mapping at the top level"),
        ("train: [\n", [], "not valid YAML"),
        ("", ["train.lr=[1"], "--set train.lr: '[1' is not a YAML value"),
        ("", ["dataset.image_size=224", "dataset.resize=100"], "below image_size"),
    ],
)
def test_bad_settings_fail_with_a_clear_message(
    tmp_path: Path, yaml_text: str, overrides: list[str], message: str
) -> None:
    cfg = write(tmp_path / "c.yaml", yaml_text)
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("[", r"\[")):
        load_settings(cfg, overrides)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(tmp_path)  # a folder


def test_numbers_are_taken_for_string_settings() -> None:
    """YAML reads ``--set train.precision=32`` as a number; Lightning's "32" is meant."""
    settings = load_settings(overrides=["train.precision=32", "tracking.run_name=2024"])
    assert settings.train.precision == "32" and settings.tracking.run_name == "2024"


def test_cli_config_errors_exit_2_with_one_line(tmp_path: Path) -> None:
    for args in (
        ["--set", "train.nope=1"],
        ["--set", "train.lr=abc"],
        ["-c", str(tmp_path / "missing.yaml")],
        ["-c", str(tmp_path)],
        ["--set", "train.lr=[1"],
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "plantdx.cli", "train", *args], capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 2, proc.stderr
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr


def test_flat_settings_are_mlflow_params() -> None:
    flat = load_settings(overrides=["train.lr=0.01"]).flat()
    assert flat["train.lr"] == 0.01
    assert "dataset.root" in flat and "tracking.uri" in flat
    assert all(not isinstance(v, dict) for v in flat.values())


def test_every_shipped_config_loads() -> None:
    configs = sorted((Path(__file__).resolve().parents[1] / "configs").rglob("*.yaml"))
    assert configs
    for path in configs:
        load_settings(path)
