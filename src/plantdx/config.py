"""One typed settings object for every stage.

Precedence, lowest first: defaults < YAML file (``-c``) < environment (``PLANTDX_``, ``__`` nesting)
< CLI ``--set a.b=value``. Built once at the entry point and passed down; nothing reads a global.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from plantdx.errors import ConfigError, DataError

DATA_ENV = "PLANTDX_DATA"
NONLEAF = "nonleaf"  # the domain of a root of photos that are not leaves: its folders are categories, not classes
# The shared data folders beside a checkout, and what each holds (../shared/data/README.md).
SHARED_ROOTS = (
    ("plantvillage", "lab"),
    ("plantvillage-more", "lab"),
    ("plantdoc-field", "field"),
    ("nonleaf", NONLEAF),
)


def shared_data_dir() -> Path:
    """``../shared/data`` beside the checkout (or beside the source tree, for an editable install elsewhere)."""
    beside_cwd = Path.cwd().parent / "shared" / "data"
    beside_source = Path(__file__).resolve().parents[3] / "shared" / "data"  # editable install
    return next((p for p in (beside_cwd, beside_source) if p.is_dir()), beside_cwd)


def default_data_roots() -> list[DataRoot]:
    """``PLANTDX_DATA`` (``:``-separated; an entry ``field=/path`` names the root's domain), else the shared data
    folders that exist (lab photos, field photos, photos that are not leaves)."""
    env = os.environ.get(DATA_ENV)
    if env:
        return [DataRoot.parse(entry) for entry in env.split(":") if entry.strip()]
    shared = shared_data_dir()
    found = [DataRoot(path=shared / name, domain=domain) for name, domain in SHARED_ROOTS if (shared / name).is_dir()]
    return found or [DataRoot(path=shared / "plantvillage")]


def default_data_root() -> Path:
    """The first root of the default data: the PlantVillage lab photos when nothing else is configured."""
    return default_data_roots()[0].path


class DataRoot(BaseModel):
    """One folder of class folders (``Crop___Disease/``) and the kind of photos it holds.

    ``domain`` names the kind: ``lab`` (a detached leaf on a plain board, the default), ``field`` (leaves on the
    plant), any name of a user's own, or ``nonleaf``: photos that are not leaves, whose folders are categories
    (animals, tools, rooms) learnt together as "not a leaf". Scores are reported per domain.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: Path
    domain: str = Field("lab", pattern=r"^[A-Za-z0-9_.-]+$")
    name: str | None = Field(None, description="how manifests name it; default: the folder's name")
    val_fraction: float | None = Field(None, gt=0, lt=1, description="this root's share; default dataset's")
    test_fraction: float | None = Field(None, gt=0, lt=1)

    @model_validator(mode="before")
    @classmethod
    def _from_text(cls, value: Any) -> Any:
        if isinstance(value, str | Path):
            return cls.parse(str(value)).model_dump()
        return value

    @classmethod
    def parse(cls, text: str) -> DataRoot:
        """``/data/pv`` or ``field=/data/plantdoc``."""
        domain, sep, path = text.partition("=")
        if sep and "/" not in domain and domain.strip():
            return cls(path=Path(path.strip()), domain=domain.strip())
        return cls(path=Path(text.strip()))

    @property
    def key(self) -> str:
        return self.name or self.path.name or str(self.path)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, coerce_numbers_to_str=True)  # --set x=32


class DatasetConfig(_Section):
    """Where the images are, how they are split and how they are fed to the model.

    Named ``dataset`` rather than ``data`` so that ``PLANTDX_DATA`` stays a plain path variable.
    """

    root: list[DataRoot] = Field(
        default_factory=default_data_roots,
        description="one or more folders of class folders (a path, 'domain=path', or {path, domain, ...})",
    )
    manifest: Path | None = None
    metadata: Path | None = Field(None, description="the metadata CSV of a single root; default: its metadata.csv")
    seed: int = 42
    split_by: Literal["leaf", "series"] = Field(
        "leaf",
        description="leaf: photos of one leaf stay together; series: whole runs of a photo series stay together "
        "(`series_blocks` runs of consecutive photo numbers per class and series), so a test photo comes from a "
        "part of a session no training photo does",
    )
    series_blocks: int = Field(20, ge=2, description="runs each (class, series) is cut into by the series split")
    domain_fractions: dict[str, tuple[float, float]] = Field(
        default_factory=dict,
        description="(val, test) shares of a domain's images, e.g. field: [0.2, 0.3] for a larger field test set; "
        "a root's own val_fraction/test_fraction come first, then these, then val_fraction/test_fraction",
    )
    val_fraction: float = Field(0.15, gt=0, lt=1)
    test_fraction: float = Field(0.15, gt=0, lt=1)
    max_per_class: int | None = Field(None, ge=3, description="take a stratified slice (tests, smoke runs)")
    min_images_per_class: int = Field(10, ge=1)
    image_size: int = Field(224, ge=16)
    resize: int | None = Field(None, ge=16, description="shorter side before the centre crop; default size*256/224")
    interpolation: Literal["bilinear", "area", "bicubic"] = "bilinear"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    augment: Literal["none", "light", "standard", "field"] = Field(
        "standard", description="field: crops, light, blur, noise, JPEG and occlusion of field photos (transforms.py)"
    )
    board_swap: float = Field(
        0.0, ge=0, le=1, description="share of lab training photos whose board is replaced by a non-leaf scene"
    )
    balance: Literal["none", "class_weights", "sampler"] = "class_weights"
    domain_weights: dict[str, float] | None = Field(
        None,
        description="with balance=sampler: each domain's share of an epoch's samples (e.g. lab 0.6, field 0.3, "
        "nonleaf 0.1), classes balanced within it; none: every image equally likely",
    )
    epoch_size: int | None = Field(None, ge=1, description="training samples per epoch (sampler); default: all")
    batch_size: int = Field(32, ge=1)
    num_workers: int = Field(1, ge=0)
    cache_images: bool = True
    train_on_val: bool = Field(
        False,
        description="the final refit: train on train+val with a recipe already chosen on val; keeps the last epoch",
    )
    train_fraction: float = Field(
        1.0,
        gt=0,
        le=1,
        description="learn from this share of each class's training images (a learning curve); val and test unchanged",
    )
    domain_train_fraction: dict[str, float] = Field(
        default_factory=dict,
        description="the same for one domain, e.g. field: 0.5 (a learning curve of the field photos alone)",
    )

    @field_validator("root", mode="before")
    @classmethod
    def _roots_as_list(cls, value: Any) -> Any:
        """One root or several: ``/a``, ``/a:field=/b`` (as ``PLANTDX_DATA``), a mapping, or a list of any."""
        if isinstance(value, str):
            return [v for v in value.split(":") if v.strip()]
        return list(value) if isinstance(value, list | tuple) else [value]

    @model_validator(mode="after")
    def _fractions_leave_a_train_split(self) -> DatasetConfig:
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ValueError("val_fraction + test_fraction must leave at least 10% for training")
        if self.resize_to < self.image_size:
            raise ValueError(f"resize ({self.resize_to}) is below image_size ({self.image_size}): nothing to crop")
        if not self.root:
            raise ValueError("dataset.root names no folder")
        keys = [r.key for r in self.root]
        if len(set(keys)) != len(keys):
            raise ValueError(f"two roots share a name ({', '.join(keys)}): give one a `name`")
        return self

    def root_path(self, key: str) -> Path:
        """The folder of the root a manifest row names (an empty name: the first root, as in one-root manifests)."""
        if not key:
            return self.root[0].path
        for r in self.root:
            if r.key == key:
                return r.path
        raise DataError(f"the manifest names root {key!r}, which dataset.root does not configure ({self.root_keys})")

    def locate(self, root: str, path: str) -> Path:
        """The file of a manifest row: its root's folder / its path (an absolute path, a feedback photo, as is)."""
        file = Path(path)
        return file if file.is_absolute() else self.root_path(root) / file

    @property
    def root_keys(self) -> str:
        return ", ".join(r.key for r in self.root)

    @property
    def resize_to(self) -> int:
        return self.resize if self.resize is not None else round(self.image_size * 256 / 224)


class ModelConfig(_Section):
    name: str = "mobilenet_v3_small"
    pretrained: bool = False
    pretrained_path: Path | None = None
    dropout: float = Field(0.2, ge=0, lt=1)
    width: float = Field(1.0, gt=0, description="channel multiplier of plant_cnn")
    freeze_backbone_epochs: int = Field(0, ge=0, description="train only the head for this many epochs")


class TrainConfig(_Section):
    max_epochs: int = Field(20, ge=1)
    lr: float = Field(3e-3, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    mixup_alpha: float = Field(0.0, ge=0, description="MixUp on training batches, Beta(alpha, alpha); 0: off")
    cutmix_alpha: float = Field(
        0.0, ge=0, description="CutMix on training batches; with MixUp, one of the two per batch"
    )
    mix_prob: float = Field(1.0, ge=0, le=1, description="share of training batches that MixUp/CutMix touch")
    ema_decay: float | None = Field(
        None, gt=0, lt=1, description="validate, checkpoint and export an exponential moving average of the weights"
    )
    scheduler: Literal["cosine", "onecycle", "none"] = "onecycle"
    warmup_epochs: float = Field(1.0, ge=0)
    precision: str = Field("auto", description='"auto", or a Lightning precision: "32", "16-mixed", "bf16-mixed"')
    accelerator: str = "auto"
    devices: int | str = 1
    strategy: str = "auto"
    num_nodes: int = Field(1, ge=1)
    early_stopping_patience: int = Field(5, ge=1)
    seed: int = 42
    deterministic: bool = True
    output_dir: Path = Path("runs")
    limit_train_batches: float | int = 1.0
    limit_val_batches: float | int = 1.0
    log_every_n_steps: int = Field(20, ge=1)
    progress_bar: bool = True
    threads: int | None = Field(None, ge=1, description="torch intra-op threads; default: all cores")


class ExportConfig(_Section):
    """How a trained model becomes a bundle, and what the bundle must prove on the way."""

    threads: int | None = Field(None, ge=1, description="ONNX Runtime intra-op threads for the measurements")
    parity_max_diff: float = Field(1e-3, gt=0, description="largest allowed |logit(torch) - logit(onnx)|")
    int8: bool = True
    int8_calibration_images: int = Field(300, ge=1)
    int8_min_speedup: float = Field(1.3, gt=0, description="keep INT8 only when at least this much faster")
    int8_max_accuracy_drop: float = Field(0.5, ge=0, description="... and losing at most this many points")
    torchscript: bool = True
    reference_images: int = Field(600, ge=10, description="validation images in the drift reference profile")
    abstain_target_accuracy: float = Field(0.99, gt=0, le=1, description="accuracy above the abstain threshold")
    abstain_floor: float = Field(0.3, ge=0, lt=1, description="the abstain threshold is never lower than this")
    robustness: bool = Field(True, description="score the test leaves under blur, darkening, noise and JPEG too")
    reject_threshold: float = Field(
        0.5, gt=0, le=1, description="a model with a 'not a leaf' class abstains when that class has this probability"
    )
    ood_quantile: float | None = Field(
        0.975, gt=0.5, lt=1, description="out-of-distribution threshold: this quantile of validation scores; none: off"
    )
    edge: bool = Field(True, description="write model.edge.onnx, the page's offline model (plantdx.edge)")
    edge_weights: Literal["auto", "fp32", "fp16", "int8"] = Field(
        "auto", description="auto: the most exact that fits edge_budget_bytes and agrees with the service on test"
    )
    edge_budget_bytes: int = Field(6_000_000, ge=1, description="what a phone may download (gzip, as served)")


class GateConfig(_Section):
    """When ``promote`` may move ``champion`` to a new version."""

    metric: Literal["test_accuracy", "test_f1_macro"] = "test_f1_macro"
    margin: float = Field(
        0.0,
        ge=-1,
        le=1,
        description="the candidate must beat the champion by more than this (a tie fails); negative: accept one "
        "up to this much worse (recorded on the version as promotion_gate)",
    )
    max_class_drop: float = Field(0.02, ge=0, le=1, description="no class's test F1 may fall by more than this")


class TrackingConfig(_Section):
    uri: str = "sqlite:///mlflow.db"
    artifact_location: str | None = Field("mlartifacts", description="for new experiments on a local store")
    experiment: str = "plantdx"
    registered_model: str = "plantdx"
    run_name: str | None = None


class ServeConfig(_Section):
    """The diagnosis service. One uvicorn worker per process by design: scale with processes or pods."""

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    model: str | None = Field(
        None, description="a bundle folder or models:/<name>@<alias>; default: the bundle shipped in the package"
    )
    fallback_to_default: bool = Field(True, description="serve the bundled model when the registry is unreachable")
    threads: int = Field(1, ge=1, description="ONNX Runtime intra-op threads per inference stream")
    streams: int = Field(2, ge=1, description="parallel inference streams (ONNX Runtime sessions)")
    decode_workers: int = Field(4, ge=1, description="threads that decode and preprocess uploads")
    batching: bool = Field(
        True,
        description="let concurrent requests share ONNX Runtime calls once every stream is busy; a request that "
        "finds a stream free runs alone at once (docs/benchmarks.md: +15 % at concurrency 32 for the bundled "
        "model, no cost at concurrency 1)",
    )
    max_batch_size: int = Field(8, ge=1)
    max_wait_ms: float = Field(2.0, ge=0, description="how long the first request of a batch waits for company")
    queue_size: int = Field(256, ge=1, description="requests waiting for inference before the service sheds load")
    request_timeout_ms: float = Field(2000, gt=0, description="a queued request older than this gets a fast 503")
    max_in_flight: int = Field(
        128,
        ge=1,
        description="diagnosis requests being read, decoded or inferred at once; more get a fast 503 before their "
        "upload is read (the inference queue alone cannot shed load that piles up in front of it)",
    )
    max_upload_bytes: int = Field(10 * 2**20, ge=1024)
    max_pixels: int = Field(40_000_000, ge=1, description="larger images are refused before they are decoded")
    max_decoded_pixels: int = Field(
        9_000_000,
        ge=1,
        description="what an upload may decode to, after a JPEG's reduced-scale decode (PNG and WebP decode at full "
        "size; a 4K screenshot is 8.3 M): each decode worker then holds at most ~80 MiB (8.9 bytes per pixel "
        "measured with alpha, 4.1 without)",
    )
    max_batch_images: int = Field(16, ge=1)
    top_k: int = Field(3, ge=1)
    rate_limit: str = Field("600/minute", description="per API key (X-API-Key), else per client address")
    api_keys: list[SecretStr] = Field(default_factory=list, description="keys with a rate-limit budget of their own")
    int8: bool = Field(False, description="serve model.int8.onnx when the bundle kept one")
    redis_url: str | None = Field(None, description="jobs (Celery) and shared rate limits; none: in-process")
    job_ttl_s: int = Field(3600, ge=1)
    job_workers: int = Field(1, ge=1, description="in-process job workers")
    job_visibility_timeout_s: int = Field(
        60, ge=1, description="Redis: a job whose worker died is handed to another worker after this long"
    )
    cors_origins: list[str] = Field(default_factory=list, description="closed by default")
    trusted_proxies: list[str] = Field(default_factory=list, description="whose X-Forwarded-For is believed")
    drain_timeout_s: float = Field(20.0, gt=0)
    log_level: str = "INFO"


class MonitorConfig(_Section):
    """The prediction log, drift checks, live accuracy and the feedback images that retraining uses."""

    log_url: str | None = Field(
        "sqlite:///predictions.db",
        description="SQLAlchemy URL of the prediction log (postgresql+psycopg://...); none: off",
    )
    sample_rate: float = Field(1.0, ge=0, le=1, description="fraction of served predictions written to the log")
    log_queue_size: int = Field(10_000, ge=1, description="predictions buffered for the log writer before dropping")
    log_queue_mb: float = Field(
        256.0,
        gt=0,
        description="and at most this much memory of them (inputs, kept photos): a stalled log database"
        " must not take the pod's memory",
    )
    image_sample_rate: float = Field(
        1.0, ge=0, le=1, description="fraction of logged predictions whose image bytes are held for feedback"
    )
    image_store_mb: float = Field(
        256, ge=0, description="bound on stored image bytes; unlabelled images are evicted first, oldest first"
    )
    window: int = Field(500, ge=10, description="drift window: the last N logged predictions")
    min_window: int = Field(100, ge=10, description="fewer logged predictions than this: no drift verdict")
    # Bonferroni: 0.01 spread over ~20 monitored columns, and any one drifted column flags the window. Measured on
    # the real test split (README, Monitoring): Evidently's default (p<0.05, half the columns) missed blur and noise.
    column_threshold: float = Field(0.0005, gt=0, lt=1, description="a column drifts when its test p-value is below")
    drift_share: float = Field(
        0.04, gt=0, le=1, description="the window drifts when this share of columns drifted (0.04: any one of 25)"
    )
    check_interval_s: float = Field(
        300, gt=0, description="how often `plantdx monitor --watch` checks drift (it runs beside the service)"
    )
    verdict_poll_s: float = Field(
        15, ge=0, description="how often the service reads the latest drift verdict for its gauges; 0: only on request"
    )
    alert_webhook: str | None = Field(None, description="POSTed a JSON payload when a drift check finds drift")
    report_dir: Path = Field(Path("monitoring"), description="where `plantdx monitor` writes its latest report files")
    feedback_window: int = Field(500, ge=1, description="live accuracy over the last N labelled predictions")


FLOWER_ENV = Path(".venv-flwr")  # where `make install` puts Flower and its older typer/rich/fastapi pins


class FederateConfig(_Section):
    """Federated training on Flower: farms train one model together without pooling their photos.

    ``plantdx federate`` starts a SuperLink and one SuperNode per farm as local processes (or joins a running
    SuperLink), partitions the training split into the farms' photos, and sends the final global model through the
    same export, registry and gate as central training. Validation and test stay central.
    """

    clients: int = Field(3, ge=1, description="farms: SuperNodes started locally, one per partition")
    superlink: str | None = Field(
        None, description="host:port of a running SuperLink to join (its farms run their own SuperNodes); none: local"
    )
    port: int | None = Field(
        None, ge=1024, le=65535, description="the local SuperLink's port; none: a free one (never serve's 8000)"
    )
    rounds: int = Field(3, ge=1)
    local_epochs: int = Field(1, ge=1, description="epochs each farm trains per round")
    partition: Literal["iid", "crop", "series", "source", "dirichlet"] = Field(
        "iid",
        description="how the training split becomes farms (leaf groups kept whole): iid; crop (a farm per crop); "
        "series (whole photo series); source (the field photos one farm, lab photos the others); dirichlet "
        "(label skew, dirichlet_alpha)",
    )
    dirichlet_alpha: float = Field(0.5, gt=0, description="smaller: each farm sees fewer classes")
    strategy: Literal["fedavg", "fedprox", "fedmedian", "fedtrimmedavg"] = "fedavg"
    proximal_mu: float = Field(0.01, ge=0, description="FedProx: weight of the pull towards the global model")
    trim_beta: float = Field(0.2, gt=0, lt=0.5, description="FedTrimmedAvg: share cut from each end")
    batchnorm: Literal["averaged", "local"] = Field(
        "averaged",
        description="averaged: BatchNorm weights and statistics are averaged like any weight; local (FedBN): each "
        "farm keeps its own between rounds (the global model then carries their average)",
    )
    min_replies: int = Field(2, ge=1, description="valid replies a round needs to change the global model")
    min_valid_rounds: int | None = Field(
        None, ge=1, description="a run with fewer valid rounds is not registered; none: every round must be valid"
    )
    round_timeout_s: float = Field(300, gt=0, description="a farm that has not replied by then is left out")
    deadline_s: float = Field(
        3600, gt=0, description="start-up and every round (not the export after them); then everything is stopped"
    )
    max_weight_ratio: float = Field(
        10.0, gt=1, description="a reply whose weights' norm is this many times above or below the global one's"
    )
    dp_noise_multiplier: float | None = Field(
        None,
        ge=0,
        description="Flower's client-side differential privacy: farms clip their update to dp_clipping_norm, the "
        "server adds Gaussian noise of this many clipping norms (over the farms); none: off",
    )
    dp_clipping_norm: float = Field(1.0, gt=0)
    flower_env: Path = Field(FLOWER_ENV, description="the virtual environment with flwr (make install makes it)")
    register_model: bool = Field(True, description="export, register as challenger and offer it to the gate")
    drills: dict[str, str] = Field(
        default_factory=dict,
        description="fault drills: farm -> crash@ROUND, hang@ROUND, nan, inf, scale, shape or count (what its "
        "node does wrong)",
    )


class Settings(BaseSettings):
    """The whole configuration. Dumped into every MLflow run."""

    model_config = SettingsConfigDict(
        env_prefix="PLANTDX_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_assignment=True,
    )

    dataset: DatasetConfig = Field(default_factory=lambda: DatasetConfig())
    model: ModelConfig = Field(default_factory=lambda: ModelConfig())
    train: TrainConfig = Field(default_factory=lambda: TrainConfig())
    export: ExportConfig = Field(default_factory=lambda: ExportConfig())
    gate: GateConfig = Field(default_factory=lambda: GateConfig())
    serve: ServeConfig = Field(default_factory=lambda: ServeConfig())
    monitor: MonitorConfig = Field(default_factory=lambda: MonitorConfig())
    admin_token: SecretStr | None = Field(None, description="PLANTDX_ADMIN_TOKEN; the admin routes exist only with it")
    tracking: TrackingConfig = Field(default_factory=lambda: TrackingConfig())
    federate: FederateConfig = Field(default_factory=lambda: FederateConfig())

    def flat(self) -> dict[str, Any]:
        """``{"train.lr": 0.003, ...}``: the form MLflow params take."""
        return dict(_flatten(self.model_dump(mode="json")))


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> Iterable[tuple[str, Any]]:
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from _flatten(value, f"{name}.")
        else:
            yield name, value


def parse_overrides(overrides: Iterable[str]) -> dict[str, Any]:
    """``["train.lr=0.1", "model.name=resnet50"]`` -> nested dict; values are parsed as YAML scalars."""
    tree: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value, got {item!r}")
        node = tree
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {key}: {part!r} is set to a value and used as a section")
            node = child
        try:
            node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {key}: {raw!r} is not a YAML value ({exc.__class__.__name__})") from None
    return tree


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return loaded


def describe_validation_error(exc: ValidationError) -> str:
    """One line per problem, named by its dotted key: what a person reads before fixing YAML."""
    problems = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "<root>"
        if err["type"] == "extra_forbidden":
            problems.append(f"unknown key {key!r}")
        else:
            problems.append(f"{key}: {err['msg']} (got {err.get('input')!r})")
    return "invalid configuration: " + "; ".join(problems)


def load_settings(config: Path | str | None = None, overrides: Iterable[str] = ()) -> Settings:
    """Build the settings from a YAML file, the environment and ``--set`` overrides."""
    file_values = read_yaml(Path(config)) if config is not None else {}
    cli_values = parse_overrides(overrides)

    class _Layered(Settings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            # Highest priority first: CLI, environment, YAML (defaults come from the fields).
            return init_settings, env_settings, InitSettingsSource(settings_cls, file_values)

    try:
        layered = _Layered(**cli_values)
        # Plain ``Settings`` again so the object pickles and compares like any other.
        return Settings.model_validate(layered.model_dump())
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc)) from None
    except ValueError as exc:  # pydantic-settings' own parse errors (e.g. bad JSON in an env var)
        raise ConfigError(f"invalid configuration: {exc}") from None
