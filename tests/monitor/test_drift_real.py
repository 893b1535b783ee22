"""Drift detection on the real PlantVillage test split with the bundled model: clean windows stay quiet, corrupted
ones and photographs of other things are flagged (and the latter mostly abstained on)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import skimage.data
from PIL import Image, ImageEnhance, ImageFilter

from plantdx.config import MonitorConfig
from plantdx.images import load_rgb
from plantdx.inference import Predictor, default_bundle_path
from plantdx.monitor.drift import check_drift
from plantdx.serve.prediction_log import score_images

pytestmark = [pytest.mark.realdata, pytest.mark.slow]

log = logging.getLogger(__name__)  # the measured rates, shown with -o log_cli=true
WINDOW = 200
CLEAN_WINDOWS = 100


def _noise(im: Image.Image) -> Image.Image:
    rng = np.random.default_rng(0)
    a = np.asarray(im, dtype=np.float32)
    return Image.fromarray(np.clip(a + rng.normal(0, 20, a.shape), 0, 255).astype(np.uint8))


def _colour_cast(im: Image.Image) -> Image.Image:
    r, g, b = im.split()
    return Image.merge("RGB", [r.point(lambda v: min(255, int(v * 1.25))), g.point(lambda v: int(v * 0.9)),
                               b.point(lambda v: int(v * 0.75))])  # fmt: skip


CORRUPTIONS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "darkened": lambda im: ImageEnhance.Brightness(im).enhance(0.5),
    "blurred": lambda im: im.filter(ImageFilter.GaussianBlur(2)),
    "colour-shifted": _colour_cast,
    "noised": _noise,
}


@pytest.fixture(scope="module")
def scored(bundled_split: tuple[Any, Any]) -> dict[str, Any]:
    """Leaf photos of the photo sessions the bundle's drift reference was drawn from (its validation split, lab and
    field), decoded as the service decodes uploads. Not the test split: under the series split its sessions are
    other sessions, and their sharpness differs enough that most windows of them are flagged (docs/model.md)."""
    dataset, manifest = bundled_split
    rows = [r for r in manifest.split("val") if r.domain != "nonleaf"]
    predictor = Predictor(default_bundle_path())
    resize = int(predictor.spec["resize"])
    images = [load_rgb(dataset.locate(r.root, r.path), resize) for r in rows]
    out = {"predictor": predictor, "clean": score_images(predictor, images)}
    subset = [images[i] for i in np.random.default_rng(0).choice(len(images), 400, replace=False)]
    for name, corrupt in CORRUPTIONS.items():  # windows of 200 drawn from 400 corrupted images
        out[name] = score_images(predictor, [corrupt(im) for im in subset])
    return out


def _windows(rows: list[dict[str, Any]], n: int, seed: int) -> list[list[dict[str, Any]]]:
    rng = np.random.default_rng(seed)
    return [[rows[i] for i in rng.choice(len(rows), WINDOW, replace=False)] for _ in range(n)]


def test_clean_windows_rarely_raise_drift(scored: dict[str, Any]) -> None:
    reference = scored["predictor"].bundle.reference
    cfg = MonitorConfig()
    alarms = [check_drift(w, reference, cfg).detected for w in _windows(scored["clean"], CLEAN_WINDOWS, seed=1)]
    rate = sum(alarms) / len(alarms)
    log.info(f"clean false-alarm rate: {sum(alarms)}/{len(alarms)} windows of {WINDOW}")
    assert rate <= 0.02  # the family-wise design rate is 0.01 per window


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_corrupted_windows_raise_drift(scored: dict[str, Any], corruption: str) -> None:
    reference = scored["predictor"].bundle.reference
    results = [check_drift(w, reference, MonitorConfig()) for w in _windows(scored[corruption], 10, seed=2)]
    detected = sum(r.detected for r in results)
    log.info(
        f"{corruption}: {detected}/10 windows flagged; drifted columns e.g. {results[0].summary['drifted_columns']}"
    )
    assert detected == 10


def _non_leaf_photos(n_per_photo: int = 12) -> list[Image.Image]:
    """Random square crops of scikit-image's real sample photographs (people, cats, coffee, a rocket, ...)."""
    names = ["astronaut", "cat", "chelsea", "coffee", "colorwheel", "hubble_deep_field", "immunohistochemistry",
             "logo", "retina", "rocket"]  # fmt: skip
    rng = np.random.default_rng(0)
    crops = []
    for name in names:
        photo = Image.fromarray(getattr(skimage.data, name)()[..., :3])
        w, h = photo.size
        for _ in range(n_per_photo):
            side = int(min(w, h) * rng.uniform(0.5, 1.0))
            x, y = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
            crops.append(photo.crop((x, y, x + side, y + side)))
    return crops


def test_non_leaf_photographs_raise_drift_and_are_mostly_abstained_on(scored: dict[str, Any]) -> None:
    predictor = scored["predictor"]
    rows = score_images(predictor, _non_leaf_photos())
    result = check_drift(rows, predictor.bundle.reference, MonitorConfig())
    abstained = float(np.mean([r["abstained"] for r in rows]))
    clean_abstained = float(np.mean([r["abstained"] for r in scored["clean"]]))
    log.info(f"non-leaf: drift={result.detected}, abstained {abstained:.0%} (clean test split: {clean_abstained:.1%})")
    assert result.detected and result.summary["confidence_drift"]
    assert abstained > 0.5
    assert clean_abstained < 0.10


def test_only_the_newest_model_versions_rows_are_judged(scored: dict[str, Any]) -> None:
    """After a promotion the window still holds the old model's rows; judged against the new model's reference they
    would read as drift. Here the old rows are even corrupted photos: the verdict is the clean new rows' alone."""
    reference = scored["predictor"].bundle.reference
    old = [{**r, "model_version": "1"} for r in _windows(scored["noised"], 1, seed=3)[0]]
    new = [{**r, "model_version": "2"} for r in _windows(scored["clean"], 1, seed=4)[0]]
    assert check_drift(old, reference, MonitorConfig()).detected  # the old rows on their own: drift
    result = check_drift(old + new, reference, MonitorConfig())
    assert not result.detected and result.summary["window"]["model_versions"] == ["2"]
    assert result.summary["window"]["size"] == WINDOW
    older = check_drift(old + new, reference, MonitorConfig(), model_version="1")  # the service names its version
    assert older.detected and older.summary["window"]["model_versions"] == ["1"]
