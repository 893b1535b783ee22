"""Export a trained model into a bundle: ONNX (dynamic batch), INT8, TorchScript, calibration, drift reference.

Every number that goes into ``card.json`` is measured here through the bundle's own numpy+PIL preprocessing and
ONNX Runtime, i.e. the path that serving takes.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
import torchvision
from torch import nn

import plantdx
from plantdx.bundle import Bundle, load_bundle, write_card
from plantdx.config import NONLEAF, DatasetConfig, ExportConfig, Settings
from plantdx.corruptions import score_corrupted
from plantdx.data.scan import NOT_A_LEAF
from plantdx.data.split import Manifest, ManifestRow
from plantdx.data.transforms import preprocess_spec
from plantdx.errors import PlantdxError
from plantdx.images import load_rgb, resize_for_model, to_input
from plantdx.inference import Diagnosis, Predictor, create_session, input_contrast
from plantdx.model import PlantClassifier, PlantCNN
from plantdx.ood import fit_detector, ood_scores
from plantdx.profile import features_from_input, reference_profile
from plantdx.scores import EvalReport, compute_report, domain_order, expected_calibration_error, softmax
from plantdx.weights import PACKAGED

OPSET = 18


class ExportError(PlantdxError):
    """The model cannot be exported as asked, or the export does not match the model."""


@dataclass(frozen=True)
class ParityResult:
    n: int
    max_abs_logit_diff: float
    top1_agreement: float
    passed: bool


@dataclass(frozen=True)
class LatencyResult:
    p50_ms: float
    p99_ms: float
    runs: int


@dataclass
class ExportResult:
    bundle: Path
    card: dict[str, Any]


# -- the graphs -------------------------------------------------------------------------------------------------


EXPORT_STEPS = (
    "ONNX graph and parity on the test split",
    "calibration on the validation split",
    "drift reference and leaf detector",
    "latency and INT8",
    "TorchScript and card",
    "edge model (and ExecuTorch) checked against the service",
)


def _no_step(_: str) -> None:
    pass


def _graph_kind(model: nn.Module) -> str:
    if isinstance(model, PlantCNN):
        return "plant_cnn"
    if isinstance(model, torchvision.models.ResNet):
        return "resnet"
    if all(hasattr(model, a) for a in ("features", "avgpool", "classifier")):
        return "features_avgpool_classifier"  # torchvision MobileNet, EfficientNet, ConvNeXt, ...
    if hasattr(model, "forward_features") and hasattr(model, "forward_head"):
        return "timm"
    return "logits_only"


def _last_linear(model: nn.Module, kind: str) -> nn.Linear | None:
    """The classifier's linear layer, when the head is global pooling then exactly one linear layer."""
    m: Any = model
    head = {
        "plant_cnn": getattr(m, "classifier", None),
        "resnet": getattr(m, "fc", None),
        "features_avgpool_classifier": getattr(m, "classifier", None),
    }.get(kind)
    if kind == "timm" and getattr(getattr(m, "global_pool", None), "pool_type", None) == "avg":
        # timm's EfficientNet: average pooling of the features, then one linear layer (MobileNetV3 has a hidden
        # layer between them: its classifier does not take the features' width).
        linear = getattr(m, "classifier", None)
        if isinstance(linear, nn.Linear) and linear.in_features == getattr(m, "num_features", None):
            head = linear
    if isinstance(head, nn.Linear):
        return head
    if isinstance(head, nn.Sequential) and all(isinstance(x, nn.Linear | nn.Dropout | nn.Flatten) for x in head):
        linears = [x for x in head if isinstance(x, nn.Linear)]
        return linears[0] if len(linears) == 1 else None
    return None  # e.g. MobileNetV3's hidden layer or ConvNeXt's LayerNorm: a heat map would not be exact


class ExportGraph(nn.Module):
    """The served graph: ``logits``; the pooled ``embedding`` (drift monitoring); and ``cam`` [batch, classes, h, w],
    the class-activation maps (last feature map weighted by the classifier), so serving draws heat maps without
    torch. Outputs other than ``logits`` exist only where the architecture allows them."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.kind = _graph_kind(model)
        self.cam_layer = _last_linear(model, self.kind)

    @property
    def output_names(self) -> list[str]:
        if self.kind == "logits_only":
            return ["logits"]
        return ["logits", "embedding", "cam"] if self.cam_layer is not None else ["logits", "embedding"]

    def forward(self, x: torch.Tensor) -> Any:
        m: Any = self.model
        if self.kind == "logits_only":
            return m(x)
        if self.kind == "plant_cnn":
            fmap = m.features(x)
            emb = m.pool(fmap).flatten(1)
            logits = m.classifier(emb)
        elif self.kind == "resnet":
            y = m.maxpool(m.relu(m.bn1(m.conv1(x))))
            fmap = m.layer4(m.layer3(m.layer2(m.layer1(y))))
            emb = m.avgpool(fmap).flatten(1)
            logits = m.fc(emb)
        elif self.kind == "features_avgpool_classifier":
            fmap = m.features(x)
            pooled = m.avgpool(fmap)
            emb = pooled.flatten(1)
            first = m.classifier[0] if isinstance(m.classifier, nn.Sequential) else m.classifier
            # MobileNet/EfficientNet heads take the flattened vector; ConvNeXt's starts with a 2-D LayerNorm.
            logits = m.classifier(emb if isinstance(first, nn.Linear | nn.Dropout) else pooled)
        else:
            fmap = m.forward_features(x)
            emb = m.forward_head(fmap, pre_logits=True)
            logits = m.forward_head(fmap)
        if self.cam_layer is None:
            return logits, emb
        cam = torch.einsum("kc,bchw->bkhw", self.cam_layer.weight, fmap)
        return logits, emb, cam


def export_onnx(model: nn.Module, image_size: int, path: Path) -> Path:
    """ONNX with input ``image`` [batch, 3, crop, crop] (dynamic batch) and output ``logits`` [batch, classes]
    (+ ``embedding`` and ``cam`` where the architecture has them, see ``ExportGraph``).

    torch 2.14 exports through ``torch.export`` (dynamo) by default, which needs the ``onnx`` and ``onnxscript``
    packages; weights stay inside the one file (``external_data=False``).
    """
    import onnx

    graph = ExportGraph(model.eval().cpu()).eval()
    example = torch.randn(2, 3, image_size, image_size)
    batch = torch.export.Dim("batch", min=1, max=1024)
    path.parent.mkdir(parents=True, exist_ok=True)
    program = torch.onnx.export(
        graph,
        (example,),
        input_names=["image"],
        output_names=graph.output_names,
        dynamic_shapes=({0: batch},),
        opset_version=OPSET,
        external_data=False,
        dynamo=True,
    )
    if program is None:
        raise ExportError("torch.onnx.export returned no program")
    program.save(str(path), external_data=False)
    onnx.checker.check_model(str(path))
    return path


def export_torchscript(model: nn.Module, image_size: int, path: Path) -> Path:
    """Legacy: TorchScript is in maintenance upstream; kept because the design asks for it and for C++ users."""
    model = model.eval().cpu()
    with torch.inference_mode():
        traced = torch.jit.trace(model, torch.randn(1, 3, image_size, image_size), check_trace=False)  # type: ignore[no-untyped-call]
    traced.save(str(path))  # type: ignore[no-untyped-call]
    return path


class _Reader:
    """ONNX Runtime calibration reader over preprocessed images, one at a time."""

    def __init__(self, inputs: np.ndarray, name: str) -> None:
        self._items: Iterator[np.ndarray] = iter(inputs)
        self._name = name

    def get_next(self) -> dict[str, np.ndarray] | None:
        item = next(self._items, None)
        return None if item is None else {self._name: item[None].astype(np.float32)}


def quantize_int8(onnx_path: Path, calibration: np.ndarray, out: Path) -> Path:
    """Static INT8, QDQ format, per-channel weights, calibrated on preprocessed training images."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(onnx_path), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            prepared,
            out,
            calibration_data_reader=_Reader(calibration, "image"),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
    return out


# -- measurements -------------------------------------------------------------------------------------------------


def onnx_outputs(session: Any, inputs: np.ndarray, names: Sequence[str], batch_size: int = 64) -> list[np.ndarray]:
    parts = [session.run(list(names), {"image": inputs[i : i + batch_size]}) for i in range(0, len(inputs), batch_size)]
    return [np.concatenate([p[j] for p in parts]) for j in range(len(names))]


def onnx_logits(session: Any, inputs: np.ndarray, batch_size: int = 64) -> np.ndarray:
    return onnx_outputs(session, inputs, ["logits"], batch_size)[0]


def torch_logits(model: nn.Module, inputs: np.ndarray, batch_size: int = 64) -> np.ndarray:
    model = model.eval().cpu()
    with torch.inference_mode():
        return np.concatenate(
            [model(torch.from_numpy(inputs[i : i + batch_size])).numpy() for i in range(0, len(inputs), batch_size)]
        )


def parity(reference: np.ndarray, candidate: np.ndarray, *, max_diff: float, min_agreement: float) -> ParityResult:
    diff = float(np.abs(reference - candidate).max())
    agreement = float((reference.argmax(1) == candidate.argmax(1)).mean())
    return ParityResult(len(reference), diff, agreement, diff <= max_diff and agreement >= min_agreement)


def single_image_latency(session: Any, example: np.ndarray, runs: int = 200, warmup: int = 20) -> LatencyResult:
    x = example[None].astype(np.float32)
    for _ in range(warmup):
        session.run(["logits"], {"image": x})
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        session.run(["logits"], {"image": x})
        times.append((time.perf_counter() - t) * 1000)
    times.sort()
    return LatencyResult(statistics.median(times), times[min(len(times) - 1, int(0.99 * len(times)))], runs)


T_MIN, T_MAX = 0.05, 20.0


def fit_temperature(logits: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None) -> float:
    """The temperature minimising validation NLL, each image counted by its ``weight`` (a 1-D convex problem in
    log T: golden-section search)."""
    w = np.ones(len(labels)) if weights is None else np.asarray(weights, dtype=np.float64)

    def nll(log_t: float) -> float:
        p = softmax(logits, float(np.exp(log_t)))
        return float(-(w * np.log(np.clip(p[np.arange(len(labels)), labels], 1e-12, None))).sum() / w.sum())

    lo, hi = np.log(T_MIN), np.log(T_MAX)
    ratio = (np.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = nll(a), nll(b)
    for _ in range(80):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = nll(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = nll(b)
    return float(np.exp((lo + hi) / 2))


def calibration_temperature(
    logits: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None
) -> tuple[float, str | None]:
    """``fit_temperature``, unless the fit ran into its bounds, and then 1 with the reason.

    With no validation error the NLL falls all the way to T = 0.05: logits sharpened 20 times, every answer ~100 %
    sure, and abstention switched off. That is no calibration, so the logits are then left as they are.
    """
    t = fit_temperature(logits, labels, weights)
    if T_MIN * 1.5 < t < T_MAX / 1.5:  # golden section stops near, not at, a bound
        return t, None
    errors = int((logits.argmax(1) != labels).sum())
    return 1.0, f"the fit ran to its bound T = {t:.3g} ({errors} validation errors); T = 1 kept"


def domain_balance(domains: np.ndarray) -> np.ndarray:
    """Per-image weights under which every domain counts the same in total."""
    names, inverse, counts = np.unique(domains, return_inverse=True, return_counts=True)
    return np.asarray(len(domains) / (len(names) * counts[inverse]), dtype=np.float64)


def answers_of(probs: np.ndarray, reject: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What a bundle answers: the most likely disease class, its probability, and P(not a leaf) (0 without one)."""
    leaf = probs.copy()
    not_leaf = np.zeros(len(probs))
    if reject is not None:
        not_leaf = probs[:, reject].copy()
        leaf[:, reject] = -1.0
    return leaf.argmax(1), leaf.max(1), not_leaf


def abstain_threshold(
    probs: np.ndarray,
    labels: np.ndarray,
    target_accuracy: float,
    floor: float,
    *,
    reject: int | None = None,
    reject_threshold: float = 0.5,
    weights: np.ndarray | None = None,
) -> tuple[float, bool]:
    """Lowest confidence above which validation accuracy reaches ``target_accuracy`` (never below ``floor``).

    The answers are the disease classes; a photo the "not a leaf" output (``reject``) turns away is not answered
    whatever the threshold. ``weights`` weigh the photos (e.g. each domain the same). Returns the threshold and
    whether the target was reached; when it is not, 0.99 is used and the bundle's calibration.json says so (nearly
    every answer will then be an abstention).
    """
    predicted, confidence, not_leaf = answers_of(probs, reject)
    correct = (predicted == labels).astype(np.float64)
    w = np.ones(len(labels)) if weights is None else np.asarray(weights, dtype=np.float64)
    for t in np.linspace(floor, 0.99, 99):
        kept = (confidence >= t) & (not_leaf < reject_threshold)
        if kept.any() and np.average(correct[kept], weights=w[kept]) >= target_accuracy:
            return float(t), True
    return 0.99, False


def abstention_sources(
    predictor: Predictor, outputs: np.ndarray, inputs: np.ndarray, rows: Sequence[ManifestRow]
) -> dict[str, dict[str, float]]:
    """Per domain, the share of photos each check alone would turn away, and all of them together (what is
    served): which of the "not a leaf" output, the out-of-distribution score, the confidence threshold and the
    contrast floor does the work, and what each costs in good leaves."""
    logits, embeddings = predictor.split(outputs)
    probs = softmax(logits, predictor.temperature)
    _, confidence, not_leaf = answers_of(probs, predictor.reject)
    checks: dict[str, np.ndarray] = {
        "low_confidence": confidence < predictor.threshold,
        "uniform": np.array([input_contrast(x, predictor.spec) < (predictor.min_contrast or 0) for x in inputs]),
    }
    if predictor.reject is not None:
        checks["not_a_leaf_output"] = not_leaf >= predictor.reject_threshold
    if predictor.ood is not None and embeddings is not None:
        checks["out_of_distribution"] = ood_scores(embeddings, predictor.ood) > predictor.ood["threshold"]
    checks["any"] = np.any(np.stack(list(checks.values())), axis=0)
    domains = np.array([r.domain for r in rows])
    return {
        str(d): {name: float(hit[domains == d].mean()) for name, hit in checks.items()}
        for d in dict.fromkeys(domains.tolist())
    }


TAGGED = ("accuracy", "f1_macro", "abstained", "answered_accuracy")  # per domain, also flat in card["metrics"]


def served_scores(
    answers: Sequence[Diagnosis],
    rows: Sequence[ManifestRow],
    logits: np.ndarray,
    labels: np.ndarray,
    temperature: float,
    classes: Sequence[str],
) -> dict[str, dict[str, Any]]:
    """Per domain, what the served answers were worth: accuracy, macro-F1 and the lowest class recall of the answer
    given (the most likely disease, even when abstaining) over every photo, calibration error, and how many were
    abstained on and how right the others were. For photos that are not leaves, how many were turned away."""
    domains = np.array([r.domain for r in rows])
    abstained = np.array([a.abstained for a in answers])
    predicted = np.array([classes.index(a.label) for a in answers])
    out: dict[str, dict[str, Any]] = {}
    for domain in dict.fromkeys(domains.tolist()):
        mask = domains == domain
        scores: dict[str, Any] = {"images": int(mask.sum()), "abstained": float(abstained[mask].mean())}
        if domain != NONLEAF:
            one_hot = np.eye(len(classes))[predicted[mask]]  # the answers given (a disease class), scored as such
            report = compute_report(one_hot, labels[mask], classes, macro_over="truth")
            answered = mask & ~abstained
            recalls = {c: s.recall for c, s in report.per_class.items() if s.support > 0}
            scores |= {
                "accuracy": float((predicted[mask] == labels[mask]).mean()),
                "f1_macro": report.f1_macro,
                "min_class_recall": min(recalls.values()),
                "recall_per_class": recalls,
                "ece": expected_calibration_error(softmax(logits[mask], temperature), labels[mask]),
                "answered": float(answered.sum() / mask.sum()),
                "answered_accuracy": float((predicted[answered] == labels[answered]).mean())
                if answered.any()
                else None,
            }
        out[str(domain)] = scores
    return out


# -- the bundle ---------------------------------------------------------------------------------------------------


def _inputs(
    cfg: DatasetConfig, rows: Sequence[ManifestRow], spec: dict[str, Any]
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Preprocessed model inputs plus the resized uint8 images (for the drift profile)."""
    size, crop, how = int(spec["resize"]), int(spec["crop"]), str(spec["interpolation"])
    resized = [resize_for_model(load_rgb(cfg.locate(r.root, r.path), size), size, crop, how) for r in rows]
    return np.stack([to_input(img, spec) for img in resized]), resized


T = TypeVar("T")


def _sample(rows: list[T], n: int, seed: int) -> list[T]:
    if len(rows) <= n:
        return rows
    rng = np.random.default_rng(seed)
    return [rows[i] for i in sorted(rng.choice(len(rows), n, replace=False))]


def export_bundle(
    settings: Settings,
    module: PlantClassifier,
    manifest: Manifest,
    out: Path,
    *,
    run_id: str | None = None,
    extra_card: dict[str, Any] | None = None,
    on_step: Callable[[str], None] = _no_step,
    native: bool = False,
) -> ExportResult:
    """Write a complete, verified bundle for ``module`` into ``out`` (replaced if it exists).

    With ``export.edge`` the bundle gets ``model.edge.onnx`` (the page's offline model, plantdx.edge); ``native``
    adds ``model.pte`` (ExecuTorch, XNNPACK: the ``edge`` extra), both checked on the test split.

    The bundle is written beside ``out`` and swapped in only once it verifies, so a failed or interrupted export
    leaves the previous bundle (the packaged default one, say) as it was. ``on_step`` hears each of
    ``EXPORT_STEPS`` as it starts, for a progress bar: an export takes minutes.
    """
    if out.exists() and any(out.iterdir()) and not (out / "card.json").is_file():
        raise ExportError(f"{out} is not empty and is not a bundle; choose another --output folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        card = _write_bundle(settings, module, manifest, staging, run_id, extra_card, on_step)
        if settings.export.edge or native:
            on_step(EXPORT_STEPS[5])
            card = _write_edge(settings, module, manifest, staging, native)
        load_bundle(staging)  # what we wrote must pass the same check that serving applies
        previous = out.parent / f".{out.name}.previous-{os.getpid()}"
        shutil.rmtree(previous, ignore_errors=True)  # left by an earlier process of the same pid
        if out.exists():
            out.rename(previous)
        try:
            staging.rename(out)
        except BaseException:
            if previous.exists():
                previous.rename(out)  # put the old bundle back
            raise
        shutil.rmtree(previous, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ExportResult(bundle=out, card=card)


def _write_edge(
    settings: Settings, module: PlantClassifier, manifest: Manifest, out: Path, native: bool
) -> dict[str, Any]:
    """``model.edge.onnx`` and, when asked, ``model.pte``, each checked against the written bundle on the test
    photos; the card is rewritten with them."""
    from plantdx.edge import split_crops, write_edge_model

    cfg = settings.export
    bundle = load_bundle(out)
    crops, truth = split_crops(bundle, settings.dataset, manifest)
    if cfg.edge:
        write_edge_model(
            out, weights=cfg.edge_weights, budget_bytes=cfg.edge_budget_bytes, test_crops=lambda _: (crops, truth)
        )
    if not native:
        return load_bundle(out).card
    from plantdx.native import write_native_model

    inputs = np.stack([to_input(c, bundle.preprocess) for c in crops])
    record = write_native_model(out, ExportGraph(module.model.eval().cpu()).eval(), inputs)
    card = {k: v for k, v in load_bundle(out, verify=False).card.items() if k != "files"}
    return write_card(out, {**card, "native": record})


def _write_bundle(
    settings: Settings,
    module: PlantClassifier,
    manifest: Manifest,
    out: Path,
    run_id: str | None,
    extra_card: dict[str, Any] | None,
    on_step: Callable[[str], None],
) -> dict[str, Any]:
    cfg = settings.export
    classes = list(module.class_names)
    if classes != manifest.classes:
        raise ExportError("the model's classes differ from the manifest's")
    data_cfg = settings.dataset.model_copy(update={"image_size": int(module.hparams["image_size"])})
    spec = preprocess_spec(data_cfg)
    root = data_cfg
    index = {c: i for i, c in enumerate(classes)}
    started = time.perf_counter()
    model = module.model.eval().cpu()

    on_step(EXPORT_STEPS[0])
    onnx_path = export_onnx(model, spec["crop"], out / "model.onnx")
    session = create_session(onnx_path, threads=settings.export.threads)

    test_rows = manifest.split("test")
    test_x, _ = _inputs(root, test_rows, spec)
    test_y = np.array([index[r.label] for r in test_rows])
    test_logits = onnx_logits(session, test_x)
    onnx_parity = parity(torch_logits(model, test_x), test_logits, max_diff=cfg.parity_max_diff, min_agreement=1.0)
    if not onnx_parity.passed:
        raise ExportError(f"ONNX export does not match PyTorch on the test images: {onnx_parity}")

    on_step(EXPORT_STEPS[1])
    val_rows = manifest.split("val")
    val_x, _ = _inputs(root, val_rows, spec)
    val_y = np.array([index[r.label] for r in val_rows])
    val_logits = onnx_logits(session, val_x)
    val_domains = np.array([r.domain for r in val_rows])
    reject = index.get(NOT_A_LEAF)
    # One temperature for every domain, fitted with each domain weighing the same: the few field photos count as
    # much as the many lab ones.
    temperature, temperature_note = calibration_temperature(val_logits, val_y, domain_balance(val_domains))
    # The abstain threshold is set on the leaf photos with each domain weighing the same: set on the lab photos
    # alone it would answer most field photos wrongly; on the field photos alone, while the model is weak there,
    # it would turn away nearly every lab photo too.
    chosen = val_domains != NONLEAF
    threshold, target_met = abstain_threshold(
        softmax(val_logits[chosen], temperature),
        val_y[chosen],
        cfg.abstain_target_accuracy,
        cfg.abstain_floor,
        reject=reject,
        reject_threshold=cfg.reject_threshold,
        weights=domain_balance(val_domains[chosen]),
    )
    target_domains = sorted(set(val_domains[chosen].tolist()), key=domain_order)
    test_report = compute_report(test_logits, test_y, classes)
    calibrated_ece = expected_calibration_error(softmax(test_logits, temperature), test_y)
    calibration: dict[str, Any] = {
        "temperature": temperature,
        "abstain_threshold": threshold,
        "fitted_on": "val",
        "val_images": dict(Counter(val_domains.tolist())),
        "abstain_target_accuracy": cfg.abstain_target_accuracy,
        "abstain_target_domains": target_domains,  # leaf photos, each domain weighing the same
        "abstain_target_met": target_met,
        **({"reject_label": NOT_A_LEAF, "reject_threshold": cfg.reject_threshold} if reject is not None else {}),
        **({"temperature_note": temperature_note} if temperature_note else {}),
    }
    (out / "calibration.json").write_text(json.dumps(calibration, indent=2) + "\n")

    # the drift reference: held-out leaf photos (training images would make every served confidence look low),
    # featured from the model input exactly as the service features what it serves
    on_step(EXPORT_STEPS[2])
    leaves = [i for i, r in enumerate(val_rows) if r.domain != NONLEAF]
    pick = _sample(leaves, cfg.reference_images, settings.dataset.seed)
    ref_x = val_x[pick]
    has_embedding = "embedding" in {o.name for o in session.get_outputs()}
    ref_out = onnx_outputs(session, ref_x, ["logits", "embedding"] if has_embedding else ["logits"])
    profile = reference_profile(
        [features_from_input(x, spec) for x in ref_x],
        softmax(ref_out[0], temperature),
        classes,
        manifest.digest,
        embeddings=ref_out[1] if has_embedding else None,
        source="validation split (leaf photos)",
    )
    (out / "reference.json").write_text(json.dumps(profile) + "\n")
    if has_embedding and cfg.ood_quantile is not None:  # "this does not look like a leaf I know" (plantdx.ood)
        train_rows = [r for r in manifest.split("train") if r.domain != NONLEAF]
        train_emb = np.concatenate(
            [
                onnx_outputs(session, _inputs(root, train_rows[i : i + 256], spec)[0], ["embedding"])[0]
                for i in range(0, len(train_rows), 256)
            ]
        )
        test_leaves = np.array([r.domain != NONLEAF for r in test_rows])
        calibration["ood"] = fit_detector(
            train_emb,
            np.array([index[r.label] for r in train_rows]),
            onnx_outputs(session, val_x[val_domains != NONLEAF], ["embedding"])[0],
            onnx_outputs(session, test_x[test_leaves], ["embedding"])[0],
            quantile=cfg.ood_quantile,
        )
        (out / "calibration.json").write_text(json.dumps(calibration) + "\n")
    (out / "labels.json").write_text(json.dumps(classes) + "\n")
    (out / "preprocess.json").write_text(json.dumps(spec, indent=2) + "\n")
    # Every test photo through the serving path (the staged bundle's Predictor): what a grower would have been told.
    served = Predictor(Bundle(out, classes, spec, calibration, profile, {}))
    outputs = served.forward(test_x)
    answers = served.answer(outputs, test_x)
    by_domain = served_scores(answers, test_rows, test_logits, test_y, temperature, classes)
    abstention = abstention_sources(served, outputs, test_x, test_rows)
    robustness = None
    if cfg.robustness:  # the test leaves, spoilt as phones spoil photos (plantdx.corruptions)
        leaf_rows = [r for r in test_rows if r.domain != NONLEAF]
        photos = [load_rgb(root.locate(r.root, r.path)) for r in leaf_rows]
        robustness = score_corrupted(served, photos, [r.label for r in leaf_rows], seed=settings.dataset.seed)

    on_step(EXPORT_STEPS[3])
    fp32_latency = single_image_latency(session, test_x[0])
    calibration_rows = _sample(manifest.split("train"), cfg.int8_calibration_images, settings.dataset.seed)
    calibration_x = _inputs(root, calibration_rows, spec)[0] if cfg.int8 else test_x[:0]
    int8 = _try_int8(
        cfg,
        onnx_path,
        out,
        calibration_x,
        test_x,
        test_y,
        test_logits,
        test_report,
        fp32_latency,
        classes,
        settings.export.threads,
    )
    on_step(EXPORT_STEPS[4])
    torchscript: dict[str, Any] = {"kept": False}
    if cfg.torchscript:
        export_torchscript(model, spec["crop"], out / "model.ts")
        torchscript = {"kept": True, "status": "legacy: TorchScript is in maintenance upstream; prefer model.onnx"}

    card = {
        "name": settings.tracking.registered_model,
        "architecture": module.hparams["model_name"],
        "recipe": recipe_of(settings, module),
        "parameters": sum(p.numel() for p in model.parameters()),
        "classes": len(classes),
        "input_size": spec["crop"],
        "outputs": [o.name for o in session.get_outputs()],
        "class_activation_map": "cam" in {o.name for o in session.get_outputs()},
        "metrics": {
            "test_accuracy": test_report.accuracy,
            "test_f1_macro": test_report.f1_macro,
            "test_ece": calibrated_ece,
            "test_ece_uncalibrated": test_report.ece,
            "test_images": test_report.n,
            "test_f1_per_class": {c: s.f1 for c, s in test_report.per_class.items()},
            "test_abstained": float(np.mean([a.abstained for a in answers])),
            **{f"test_{d}_{k}": v for d, scores in by_domain.items() for k, v in scores.items() if k in TAGGED},
            "domains": by_domain,
        },
        "abstention": abstention,
        **({"robustness": robustness} if robustness is not None else {}),
        "latency_ms": {
            "onnx_fp32_p50": fp32_latency.p50_ms,
            "onnx_fp32_p99": fp32_latency.p99_ms,
            "threads": settings.export.threads,
        },
        "parity": {"onnx": asdict(onnx_parity), **({"int8": int8["parity"]} if "parity" in int8 else {})},
        "int8": int8,
        "torchscript": torchscript,
        "data": {
            "manifest_sha256": manifest.digest,
            "test_sha256": manifest.test_digest,
            "images": len(manifest.rows),
            "roots": {r.key: {"path": str(r.path), "domain": r.domain} for r in root.root},
        },
        "run_id": run_id,
        "seed": settings.train.seed,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "plantdx_version": plantdx.__version__,
        "torch_version": torch.__version__,
        "machine": platform.machine(),
        "export_wall_time_s": round(time.perf_counter() - started, 1),
        **(extra_card or {}),
    }
    return write_card(out, card)


def _try_int8(
    cfg: Any,
    onnx_path: Path,
    out: Path,
    calibration: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    fp32_logits: np.ndarray,
    fp32_report: EvalReport,
    fp32_latency: LatencyResult,
    classes: list[str],
    threads: int | None,
) -> dict[str, Any]:
    """Quantise, then keep ``model.int8.onnx`` only if it is fast enough and accurate enough; say why if not."""
    if not cfg.int8:
        return {"kept": False, "reason": "disabled in settings (export.int8=false)"}
    path = out / "model.int8.onnx"
    try:
        quantize_int8(onnx_path, calibration, path)
    except Exception as exc:  # an op the quantiser cannot handle must not sink the whole export
        path.unlink(missing_ok=True)
        return {"kept": False, "reason": f"quantisation failed: {type(exc).__name__}: {exc}"}
    session = create_session(path, threads=threads)
    logits = onnx_logits(session, test_x)
    report = compute_report(logits, test_y, classes)
    latency = single_image_latency(session, test_x[0])
    speedup = fp32_latency.p50_ms / latency.p50_ms
    drop_points = (fp32_report.accuracy - report.accuracy) * 100
    int8_parity = parity(fp32_logits, logits, max_diff=float("inf"), min_agreement=0.0)
    result: dict[str, Any] = {
        "calibration_images": len(calibration),
        "method": "onnxruntime static QDQ, per-channel int8 weights, int8 activations, MinMax calibration",
        "test_accuracy": report.accuracy,
        "accuracy_drop_points": drop_points,
        "p50_ms": latency.p50_ms,
        "fp32_p50_ms": fp32_latency.p50_ms,
        "speedup": speedup,
        "parity": {
            "vs_fp32_max_abs_logit_diff": int8_parity.max_abs_logit_diff,
            "vs_fp32_top1_agreement": int8_parity.top1_agreement,
            "n": int8_parity.n,
        },
    }
    reasons = int8_refusals(speedup, drop_points, cfg)
    if reasons:
        path.unlink()
        return {**result, "kept": False, "reason": "; ".join(reasons)}
    return {**result, "kept": True}


def recipe_of(settings: Settings, module: PlantClassifier) -> dict[str, Any]:
    """How the model was made, as the card tells it: the warm start (which weights, from which package), the
    schedule, the data mix and the augmentation."""
    hp, data, train = module.hparams, settings.dataset, settings.train
    name = str(hp["model_name"])
    recipe: dict[str, Any] = {
        "model": name,
        "image_size": int(hp["image_size"]),
        "split_by": data.split_by,
        "augment": data.augment,
        "board_swap": data.board_swap,
        "balance": data.balance,
        "domain_weights": data.domain_weights,
        "epoch_size": data.epoch_size,
        "max_epochs": train.max_epochs,
        "lr": train.lr,
        "scheduler": train.scheduler,
        "label_smoothing": train.label_smoothing,
        "freeze_backbone_epochs": settings.model.freeze_backbone_epochs,
        "input_scaling": {"mean": list(data.mean), "std": list(data.std)},
    }
    if hp.get("pretrained") and name in PACKAGED:
        weights = PACKAGED[name]
        try:
            version = importlib.metadata.version(weights.distribution)
        except importlib.metadata.PackageNotFoundError:
            version = None
        recipe["warm_start"] = {
            "weights": "ImageNet-1k",
            "package": weights.distribution,
            "version": version,
            "licence": weights.licence,
            "input_scaling_of_the_weights": {"mean": list(weights.mean), "std": list(weights.std)},
        }
    elif hp.get("pretrained_path"):
        recipe["warm_start"] = {"file": Path(str(hp["pretrained_path"])).name}
    return recipe


def int8_refusals(speedup: float, drop_points: float, cfg: ExportConfig) -> list[str]:
    """Why the INT8 model is not worth keeping (empty: keep it): fast enough and accurate enough, both."""
    reasons = []
    if speedup < cfg.int8_min_speedup:
        reasons.append(f"speedup {speedup:.2f}x is below {cfg.int8_min_speedup}x")
    if drop_points > cfg.int8_max_accuracy_drop:
        reasons.append(f"accuracy drops {drop_points:.2f} points, more than {cfg.int8_max_accuracy_drop}")
    return reasons


def export(
    settings: Settings,
    out: Path,
    *,
    run_id: str | None = None,
    checkpoint: Path | None = None,
    version: str | None = None,
    extra_card: dict[str, Any] | None = None,
    on_step: Callable[[str], None] = _no_step,
    native: bool = False,
) -> ExportResult:
    """Export the best checkpoint of a run (or a checkpoint file, or the run behind a registered version);
    ``native`` adds the ExecuTorch program (``plantdx export --edge``)."""
    from plantdx.checkpoints import load_trained

    if version is not None:
        from plantdx.registry import Registry

        run_id = Registry(settings.tracking, settings.gate).get(version).run_id
        if run_id is None:
            raise ExportError(f"version {version} of {settings.tracking.registered_model} has no run to export from")
    trained = load_trained(settings, checkpoint=checkpoint, run_id=run_id)
    if trained.dataset.train_on_val:
        raise ExportError(
            f"{trained.run_id or trained.checkpoint} was trained on the validation split too (dataset.train_on_val): "
            "the temperature, abstain threshold and out-of-distribution threshold are fitted on validation images, "
            "which it has seen, so its bundle would be miscalibrated. Evaluate it; export a run trained without them"
        )
    as_trained = settings.model_copy(update={"dataset": trained.dataset})  # the run's preprocessing, not today's
    if trained.git_commit:  # the registry tags a version with the commit that trained it, not whatever is checked out
        extra_card = {"git_commit": trained.git_commit, **(extra_card or {})}
    return export_bundle(
        as_trained,
        trained.module,
        trained.manifest,
        out,
        run_id=trained.run_id,
        extra_card=extra_card,
        on_step=on_step,
        native=native,
    )
