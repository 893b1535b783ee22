"""Poor photos at fixed severities, and what a bundle makes of them: the robustness figures of the card.

Each corruption is applied to the decoded photo, as a phone or a hurried grower would spoil it, before the bundle's
own preprocessing: Gaussian blur (sigma 2 px), darkening to 0.35 of the light, Gaussian sensor noise (sigma 0.08 of
the range) and JPEG at quality 12. ``benchmarks/robustness.py`` runs the same function on any bundle.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

from plantdx.inference import Predictor
from plantdx.scores import compute_report


def blur(image: Image.Image, _: np.random.Generator) -> Image.Image:
    return image.filter(ImageFilter.GaussianBlur(radius=2))  # Pillow's radius is the Gaussian's sigma


def darken(image: Image.Image, _: np.random.Generator) -> Image.Image:
    return Image.fromarray((np.asarray(image, dtype=np.float32) * 0.35).round().astype(np.uint8))


def noise(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    pixels = np.asarray(image, dtype=np.float32) / 255 + rng.normal(0, 0.08, (image.height, image.width, 3))
    return Image.fromarray((np.clip(pixels, 0, 1) * 255).round().astype(np.uint8))


def jpeg(image: Image.Image, _: np.random.Generator) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=12)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


CORRUPTIONS: dict[str, Callable[[Image.Image, np.random.Generator], Image.Image]] = {
    "blur_sigma2": blur,
    "dark_0.35": darken,
    "noise_0.08": noise,
    "jpeg_q12": jpeg,
}


def score_corrupted(
    predictor: Predictor, photos: Sequence[Image.Image], labels: Sequence[str], *, seed: int = 0
) -> dict[str, dict[str, Any]]:
    """Accuracy, macro-F1 (over the classes the photos hold) and abstention of the served answers, for the photos
    as they are (``clean``) and under each corruption."""
    index = {c: i for i, c in enumerate(predictor.labels)}
    truth = np.array([index[c] for c in labels])
    out: dict[str, dict[str, Any]] = {}
    for name, spoil in {"clean": None, **CORRUPTIONS}.items():
        rng = np.random.default_rng(seed)
        batch = np.stack([predictor.preprocess(spoil(p, rng) if spoil else p) for p in photos])
        outputs = np.concatenate([predictor.forward(batch[i : i + 64]) for i in range(0, len(batch), 64)])
        answers = predictor.answer(outputs, batch)
        predicted = np.array([index[a.label] for a in answers])
        one_hot = np.eye(len(predictor.labels))[predicted]  # the answers given, scored as such
        report = compute_report(one_hot, truth, predictor.labels, macro_over="truth")
        out[name] = {
            "images": len(photos),
            "accuracy": float((predicted == truth).mean()),
            "f1_macro": report.f1_macro,
            "abstained": float(np.mean([a.abstained for a in answers])),
        }
    return out
