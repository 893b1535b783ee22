"""``Predictor``: a bundle run by ONNX Runtime, with the bundle's own pre- and post-processing.

No torch, Lightning or timm here (a test checks it in a subprocess): serving and outside users need only
onnxruntime, numpy and PIL.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnxruntime as ort
from PIL import Image

from plantdx.bundle import Bundle, BundleError, load_bundle
from plantdx.images import LUMA, input_rgb, load_rgb, model_view, preprocess, to_rgb
from plantdx.ood import ood_scores
from plantdx.scores import softmax

if TYPE_CHECKING:
    from plantdx.config import TrackingConfig


@dataclass(frozen=True)
class Diagnosis:
    """One photo's answer: the class, its calibrated confidence, and whether (and why) the model abstains."""

    label: str
    confidence: float
    probabilities: dict[str, float]
    top_k: list[tuple[str, float]]
    abstained: bool
    reason: str | None
    logits: list[float] = field(repr=False)
    ood_score: float | None = None  # Mahalanobis distance of the embedding; above the bundle's threshold: abstain
    embedding: np.ndarray | None = field(default=None, repr=False)  # for the drift monitor


def create_session(model_path: Path, threads: int | None = None, spin: bool = False) -> ort.InferenceSession:
    """CPU session with full graph optimisation; spinning off, since idle threads burning a core slow a server."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    return ort.InferenceSession(str(model_path), sess_options=options, providers=["CPUExecutionProvider"])


class Predictor:
    """Classifies images with a bundle: calibrated confidence, top-k, and abstention below the threshold."""

    def __init__(
        self,
        bundle: Bundle | Path,
        *,
        threads: int | None = None,
        int8: bool = False,
        top_k: int = 3,
    ) -> None:
        self.bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
        model_path = self.bundle.int8_path if int8 and self.bundle.int8_path is not None else self.bundle.onnx_path
        self.runtime = "onnxruntime-int8" if model_path.name == "model.int8.onnx" else "onnxruntime"
        self.session = create_session(model_path, threads)
        spec = self.bundle.preprocess
        self.spec = spec
        self.input_name = str(spec["input_name"])
        self.output_name = str(spec["output_name"])
        self.labels = self.bundle.labels
        self.temperature = self.bundle.temperature
        self.threshold = self.bundle.abstain_threshold
        self.top_k = top_k
        self._check_widths()
        ood = self.bundle.calibration.get("ood")
        # Arrays once, here: converting the JSON precision matrix on every call cost ~15 ms per prediction.
        self.ood: dict[str, Any] | None = (
            {k: np.asarray(v, dtype=np.float64) if isinstance(v, list) else v for k, v in ood.items()}
            if ood and self.has_embedding
            else None
        )
        self.min_contrast = contrast_floor(self.bundle.reference)
        # A model that learnt "not a leaf" as a class of its own: that output is never the answer, it is a reason
        # to abstain (above ``reject_threshold``); the answer is the most likely disease class.
        reject = self.bundle.calibration.get("reject_label")
        self.reject = self.labels.index(reject) if reject in self.labels else None
        self.reject_threshold = float(self.bundle.calibration.get("reject_threshold", 0.5))

    def _check_widths(self) -> None:
        """labels.json must name every logit: else the service would warm up, report ready, then fail each call."""
        widths = {o.name: o.shape[-1] for o in self.session.get_outputs() if o.shape}
        width = widths.get(self.output_name)
        if self.output_name not in widths:
            raise BundleError(f"model.onnx of bundle {self.bundle.path} has no output named {self.output_name!r}")
        if isinstance(width, int) and width != len(self.labels):
            raise BundleError(
                f"bundle {self.bundle.path}: model.onnx gives {width} logits but labels.json names "
                f"{len(self.labels)} classes"
            )

    @property
    def input_size(self) -> int:
        return int(self.spec["crop"])

    @property
    def resize(self) -> int:
        """The shorter side before the crop: also the ``min_side`` a JPEG may be decoded down to."""
        return int(self.spec["resize"])

    def preprocess(self, image: Image.Image | bytes | Path) -> np.ndarray:
        if isinstance(image, bytes):
            image = load_rgb(io.BytesIO(image), self.resize)
        elif isinstance(image, Path):
            image = load_rgb(image, self.resize)
        else:
            image = to_rgb(image)
        return preprocess(image, self.spec)

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """Raw model output for an NCHW float32 batch."""
        outputs = self.session.run([self.output_name], {self.input_name: batch.astype(np.float32, copy=False)})
        return np.asarray(outputs[0])

    @property
    def has_embedding(self) -> bool:
        return "embedding" in {o.name for o in self.session.get_outputs()}

    def logits_and_embedding(self, batch: np.ndarray) -> np.ndarray:
        """``[logits | embedding]`` side by side from one run: the monitor gets the embedding for free."""
        logits, embedding = self.session.run(
            [self.output_name, "embedding"], {self.input_name: batch.astype(np.float32, copy=False)}
        )
        return np.concatenate([np.asarray(logits), np.asarray(embedding, dtype=np.float32)], axis=1)

    def forward(self, batch: np.ndarray) -> np.ndarray:
        """What the service runs per batch: logits, plus the embedding when the bundle can use it (OOD, drift)."""
        return self.logits_and_embedding(batch) if self.has_embedding else self.logits(batch)

    def split(self, out: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """``forward``'s output -> (logits, embedding or None)."""
        n = len(self.labels)
        return out[..., :n], (out[..., n:] if out.shape[-1] > n else None)

    def answer(self, out: np.ndarray, inputs: np.ndarray, top_k: int | None = None) -> list[Diagnosis]:
        """``forward``'s output for the preprocessed ``inputs`` -> one diagnosis each: every caller's way from the
        graph's output to an answer (the service, its job workers, warm-up, offline scoring)."""
        logits, embeddings = self.split(out)
        return self.postprocess(logits, top_k, embeddings, inputs)

    def _reason(
        self, confidence: float, ood_score: float | None, contrast: float | None, not_leaf: float | None
    ) -> str | None:
        if self.min_contrast is not None and contrast is not None and contrast < self.min_contrast:
            return (
                f"the photo is almost uniform (contrast {contrast:.3f}, under {self.min_contrast:.3f}, a quarter of "
                "the flattest reference leaf's): too dark, overexposed or blank"
            )
        if not_leaf is not None and not_leaf >= self.reject_threshold:
            return f"this does not look like a leaf (probability {not_leaf:.2f} that it is not one)"
        if self.ood is not None and ood_score is not None and ood_score > self.ood["threshold"]:
            return (
                f"this does not look like the leaves the model was trained on "
                f"(out-of-distribution score {ood_score:.0f} > {self.ood['threshold']:.0f})"
            )
        if confidence < self.threshold:
            return f"confidence {confidence:.2f} is below the abstain threshold {self.threshold:.2f}"
        return None

    def postprocess(
        self,
        logits: np.ndarray,
        top_k: int | None = None,
        embeddings: np.ndarray | None = None,
        inputs: np.ndarray | None = None,
    ) -> list[Diagnosis]:
        """Probabilities, top-k and abstention. ``inputs`` (the preprocessed batch) lets a nearly uniform photo
        abstain: an all-black one passed both the confidence and the out-of-distribution checks at 0.99."""
        k = min(top_k or self.top_k, len(self.labels) - (self.reject is not None))
        probs = softmax(logits, self.temperature)
        scores: list[float | None] = [None] * len(logits)
        if self.ood is not None and embeddings is not None:
            scores = [float(v) for v in ood_scores(embeddings, self.ood)]
        contrasts: list[float | None] = [None] * len(logits)
        if inputs is not None:
            contrasts = [input_contrast(x, self.spec) for x in inputs]
        out = []
        for i, (row_logits, row, score) in enumerate(zip(logits, probs, scores, strict=True)):
            order = [int(j) for j in np.argsort(-row) if j != self.reject]  # the answers: the disease classes
            best = order[0]
            confidence = float(row[best])
            not_leaf = float(row[self.reject]) if self.reject is not None else None
            reason = self._reason(confidence, score, contrasts[i], not_leaf)
            out.append(
                Diagnosis(
                    label=self.labels[best],
                    confidence=confidence,
                    probabilities={name: float(p) for name, p in zip(self.labels, row, strict=True)},
                    top_k=[(self.labels[j], float(row[j])) for j in order[:k]],
                    abstained=reason is not None,
                    reason=reason,
                    logits=[float(x) for x in row_logits],
                    ood_score=score,
                    embedding=embeddings[i] if embeddings is not None else None,
                )
            )
        return out

    @property
    def can_explain(self) -> bool:
        return "cam" in {o.name for o in self.session.get_outputs()}

    def explain(self, image: Image.Image | bytes | Path, top_k: int | None = None) -> tuple[Diagnosis, bytes]:
        """The prediction and a class-activation heat map (RGBA PNG, the size of the model's input crop).

        The graph itself outputs the maps (last feature map weighted by the classifier), so no torch is needed.
        """
        return self.explain_input(self.preprocess(image), top_k)

    def explain_input(self, x: np.ndarray, top_k: int | None = None) -> tuple[Diagnosis, bytes]:
        """``explain`` for an already preprocessed CHW input."""
        if not self.can_explain:
            raise ValueError(f"the {self.bundle.card.get('architecture')} bundle has no class-activation output")
        x = x[None]
        names = [self.output_name, "cam", *(["embedding"] if self.has_embedding else [])]
        outputs = self.session.run(names, {self.input_name: x})
        logits, cam = outputs[0], outputs[1]
        embedding = np.asarray(outputs[2]) if self.has_embedding else None
        prediction = self.postprocess(np.asarray(logits), top_k, embedding, x)[0]
        index = self.labels.index(prediction.label)
        return prediction, heatmap_png(np.asarray(cam)[0, index], self.input_size)

    def explain_overlay(self, photo: Image.Image) -> tuple[Diagnosis, Image.Image]:
        """The answer for a decoded photo and its heat map laid over the model's view of it (RGB)."""
        diagnosis, png = self.explain(photo)
        base = Image.fromarray(model_view(photo, self.spec)).convert("RGBA")
        return diagnosis, Image.alpha_composite(base, Image.open(io.BytesIO(png))).convert("RGB")

    def predict(self, images: Sequence[Image.Image | bytes | Path], top_k: int | None = None) -> list[Diagnosis]:
        if not images:
            return []
        batch = np.stack([self.preprocess(img) for img in images])
        return self.answer(self.forward(batch), batch, top_k)

    def predict_one(self, image: Image.Image | bytes | Path, top_k: int | None = None) -> Diagnosis:
        return self.predict([image], top_k)[0]

    def describe(self) -> dict[str, Any]:
        card = self.bundle.card
        return {
            "architecture": card.get("architecture"),
            "classes": self.labels,
            "runtime": self.runtime,
            "input_size": self.input_size,
            "preprocess": dict(self.spec),
            "temperature": self.temperature,
            "abstain_threshold": self.threshold,
            "metrics": card.get("metrics", {}),
        }


def _colormap(values: np.ndarray) -> np.ndarray:
    """0..1 -> RGB: dark blue, cyan, yellow, red (a perceptually ordered ramp, no matplotlib needed)."""
    stops = np.array([[0.0, 0.0, 0.5], [0.0, 0.8, 1.0], [1.0, 0.9, 0.0], [0.85, 0.0, 0.0]])
    pos = values * (len(stops) - 1)
    lo = np.clip(np.floor(pos).astype(int), 0, len(stops) - 2)
    frac = (pos - lo)[..., None]
    return np.asarray(stops[lo] * (1 - frac) + stops[lo + 1] * frac)


def input_contrast(x: np.ndarray, spec: dict[str, Any]) -> float:
    """The luma spread of a preprocessed CHW input, on 0..1: the ``contrast`` that reference.json records (only
    that feature: the others cost more, and the log writer computes them off the request path)."""
    return float((input_rgb(x, spec) @ LUMA).std())


def contrast_floor(reference: dict[str, Any]) -> float | None:
    """A quarter of the lowest contrast among the reference's leaves (the validation split): below it a photo is
    too uniform to judge (black, white, one colour, a lens cap). The default bundle's is 0.014; none of its train
    or test photos has less than 0.041. None for a reference without the column."""
    columns, rows = reference.get("columns") or [], reference.get("rows") or []
    if "contrast" not in columns or not rows:
        return None
    at = columns.index("contrast")
    values = [float(row[at]) for row in rows if row[at] is not None]
    return 0.25 * min(values) if values else None


def heatmap_png(cam: np.ndarray, size: int) -> bytes:
    """One class-activation map -> an RGBA PNG whose opacity follows the activation (overlay it on the photo)."""
    positive = np.maximum(cam.astype(np.float32), 0)
    span = float(positive.max())
    norm = positive / span if span > 0 else positive
    small = Image.fromarray((norm * 255).astype(np.uint8), mode="L")
    big = np.asarray(small.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32) / 255.0
    rgb = (_colormap(big) * 255).astype(np.uint8)
    alpha = (np.clip(big, 0, 1) * 200).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(np.dstack([rgb, alpha]), mode="RGBA").save(out, format="PNG")
    return out.getvalue()


def default_bundle_path() -> Path:
    """The bundle that ships inside the package: ``plantdx serve`` works on a fresh machine with nothing else."""
    return Path(__file__).resolve().parent / "default_bundle"


@dataclass(frozen=True)
class ResolvedModel:
    """A verified bundle and the name and version its predictions are logged under."""

    bundle: Bundle
    name: str
    version: str
    alias: str | None  # the registry alias it was resolved through, if any
    source: str  # what was asked for: "bundled", a folder, or a models:/ URI


def resolve_model(
    spec: str | Path | None, tracking: TrackingConfig, *, cache_dir: Path = Path(".plantdx") / "bundles"
) -> ResolvedModel:
    """``models:/<name>@<alias>`` (or ``models:/<name>/<version>``), a bundle folder, or None for the bundled model.

    The one rule the service, ``plantdx monitor``, ``predict``, ``explain`` and ``bench`` read a model by: a registry
    version is named by its number, a folder by its card (``Bundle.version``).
    """
    text = str(spec) if spec is not None else None
    if text is not None and text.startswith("models:/"):
        from plantdx.registry import Registry, parse_model_uri

        name, alias = parse_model_uri(text)
        bundle = Registry(tracking.model_copy(update={"registered_model": name})).resolve(alias, cache_dir=cache_dir)
        return ResolvedModel(bundle, name, bundle.path.name, None if alias.isdigit() else alias, text)
    bundle = load_bundle(Path(text) if text is not None else default_bundle_path())
    return ResolvedModel(
        bundle, str(bundle.card.get("name", "plantdx")), bundle.version, None, text if text is not None else "bundled"
    )
