"""The page's preprocessing (static/edge/preprocess.mjs) against Pillow and plantdx.images, byte for byte, in Node.

The browser must hand the edge model the crop the service would have made; the resampling filter is ported from
Pillow's C code, so it is checked on many sizes (down, up, odd, one axis only) and on real photos."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from plantdx.config import DatasetConfig
from plantdx.data.split import manifest_for
from plantdx.images import BACKGROUND, PIL_INTERPOLATION, load_rgb, model_view, to_rgb

MODULE = Path(__file__).resolve().parents[2] / "src" / "plantdx" / "serve" / "static" / "edge" / "preprocess.mjs"
RUNNER = Path(__file__).with_name("edge_preprocess.mjs")
SPEC = {"resize": 183, "crop": 160, "interpolation": "bilinear"}


def node() -> str:
    path = shutil.which("node")
    if path is None:  # fail, not skip: .ci/run installs it (the page's JS build needs it too)
        pytest.fail("`node` is not on PATH: apt-get install nodejs npm")
    return path


def run_cases(tmp_path: Path, cases: dict[str, tuple[dict[str, object], np.ndarray]]) -> dict[str, np.ndarray]:
    """Write each case, run them all in one Node process, read the answers back."""
    for name, (case, pixels) in cases.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(case))
        (tmp_path / f"{name}.in").write_bytes(np.ascontiguousarray(pixels, dtype=np.uint8).tobytes())
    subprocess.run([node(), str(RUNNER), str(MODULE), str(tmp_path)], check=True, timeout=120)
    return {name: np.frombuffer((tmp_path / f"{name}.out").read_bytes(), dtype=np.uint8) for name in cases}


def test_resampling_matches_pillow_to_the_byte(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    sizes = [
        ((256, 256), (183, 183)),
        ((256, 192), (244, 183)),
        ((4032 // 8, 3024 // 8), (244, 183)),
        ((97, 131), (183, 247)),
        ((300, 200), (300, 150)),
        ((300, 200), (150, 200)),
        ((183, 1000), (183, 999)),
        ((17, 9), (160, 160)),
        ((640, 480), (160, 160)),
        # Pillow runs the vertical pass first for a photo more than twice as tall as wide, and not at exactly twice
        ((190, 410), (183, 395)),
        ((198, 396), (183, 366)),
        ((625, 1264), (183, 370)),
        ((1264, 625), (370, 183)),
        ((160, 150), (183, 172)),
        ((300, 120), (250, 183)),
    ]
    cases, expected = {}, {}
    for i, ((w, h), (ow, oh)) in enumerate(sizes):
        for how in ("bilinear", "area", "bicubic"):
            # smooth gradients plus noise: both rounding paths of the fixed-point sums get exercised
            grad = np.linspace(0, 255, w)[None, :, None] * np.linspace(0.2, 1, h)[:, None, None]
            px = np.clip(grad + rng.normal(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)
            name = f"r{i}_{how}"
            cases[name] = ({"op": "resample", "width": w, "height": h, "out_width": ow, "out_height": oh,
                            "interpolation": how}, px)  # fmt: skip
            expected[name] = np.asarray(Image.fromarray(px).resize((ow, oh), PIL_INTERPOLATION[how])).ravel()
    got = run_cases(tmp_path, cases)
    wrong = {n: int((got[n] != expected[n]).sum()) for n in cases if not np.array_equal(got[n], expected[n])}
    assert not wrong, f"pixels that differ from Pillow: {wrong}"


def test_transparency_is_laid_over_the_card_grey_as_pillow_pastes_it(tmp_path: Path) -> None:
    rgba = np.random.default_rng(1).integers(0, 256, (40, 50, 4), dtype=np.uint8)
    rgba[:5, :, 3] = 0
    rgba[5:10, :, 3] = 255
    got = run_cases(tmp_path, {"c": ({"op": "composite", "width": 50, "height": 40}, rgba)})["c"]
    expected = np.asarray(to_rgb(Image.fromarray(rgba, "RGBA"))).ravel()
    assert np.array_equal(got, expected)
    assert tuple(got[:3]) == BACKGROUND


def test_python_rounding_of_the_resized_side(tmp_path: Path) -> None:
    values = [0.5, 1.5, 2.5, 244.5, 245.5, 2.4999, 2.5001, 183.0]
    got = run_cases(tmp_path, {"r": ({"op": "round", "values": values}, np.zeros(1))})["r"]
    assert got.tolist() == [round(v) & 255 for v in values]


@pytest.mark.realdata
def test_real_photos_reach_the_model_as_the_service_crops_them(real_data: Path, tmp_path: Path) -> None:
    """Test photos, and the same photos as a cut-out PNG and at odd sizes: the crop equals images.model_view."""
    rows = manifest_for(DatasetConfig(root=real_data)).split("test")[::40]
    cases, expected = {}, {}
    for i, row in enumerate(rows):
        photo = load_rgb(real_data / row.path)
        variants = {"photo": photo, "odd": photo.resize((301, 227)), "tall": photo.resize((190, 410))}
        for kind, img in variants.items():
            rgba = np.asarray(img.convert("RGBA"))
            name = f"p{i}_{kind}"
            cases[name] = ({"op": "model_pixels", "width": img.width, "height": img.height, "spec": SPEC,
                            "jpeg": False}, rgba)  # fmt: skip
            expected[name] = model_view(img, SPEC).ravel()
    got = run_cases(tmp_path, cases)
    wrong = [n for n in cases if not np.array_equal(got[n], expected[n])]
    assert not wrong, wrong


@pytest.mark.realdata
def test_a_phone_sized_jpeg_is_reduced_about_as_libjpeg_decodes_it(real_data: Path, tmp_path: Path) -> None:
    """The service decodes a large JPEG at 1/2-1/8 scale (images.plan_decode); the page averages blocks instead.
    Not exact: within 2 grey levels on average over the crop, and the difference is reported in the README."""
    rows = manifest_for(DatasetConfig(root=real_data)).split("test")[::170]
    cases, expected = {}, {}
    for i, row in enumerate(rows):
        big = load_rgb(real_data / row.path).resize((2016, 1512), Image.Resampling.BICUBIC)
        buf = io.BytesIO()
        big.save(buf, format="JPEG", quality=92)
        full = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGBA"))
        cases[f"j{i}"] = ({"op": "model_pixels", "width": 2016, "height": 1512, "spec": SPEC, "jpeg": True}, full)
        expected[f"j{i}"] = model_view(load_rgb(io.BytesIO(buf.getvalue()), SPEC["resize"]), SPEC).ravel()
    got = run_cases(tmp_path, cases)
    diffs = [np.abs(got[n].astype(int) - expected[n].astype(int)) for n in cases]
    assert max(float(d.mean()) for d in diffs) < 2.0, [float(d.mean()) for d in diffs]
