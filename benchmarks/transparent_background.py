"""What a cut-out leaf (a PNG whose background is transparent) should be laid over before the model sees it.

    python benchmarks/transparent_background.py [BUNDLE] [-c configs/default_model.yaml]

The test split's photos are cut out crudely (pixels within 60 grey levels, summed over R, G, B, of the median colour
of their 6 px border are made transparent: a third of a photo, at the median), saved as RGBA PNG, and classified
through ``load_rgb`` as the service decodes them. The rows compare what the transparent pixels become: the stored
colour (black or white, as editors leave it, with no compositing) against a few backgrounds. ``images.BACKGROUND``
is the one plantdx composites over. Prints a table and writes ``benchmarks/results/transparent_background.json``.
"""

from __future__ import annotations

import argparse
import io
import json
import platform
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from PIL import Image

from plantdx.config import load_settings
from plantdx.data.split import manifest_for
from plantdx.images import BACKGROUND
from plantdx.inference import Predictor, default_bundle_path

FILLS: dict[str, tuple[int, int, int]] = {
    "stored black, no compositing": (0, 0, 0),
    "stored white, no compositing": (255, 255, 255),
    "mid grey (100)": (100, 100, 100),
    "light grey (200)": (200, 200, 200),
}


def cut_out(rgb: np.ndarray) -> np.ndarray:
    """A boolean mask of the background: close to the photo's border colour."""
    px = rgb.astype(np.int16)
    border = np.concatenate(
        [px[:6].reshape(-1, 3), px[-6:].reshape(-1, 3), px[:, :6].reshape(-1, 3), px[:, -6:].reshape(-1, 3)]
    )
    return np.abs(px - np.median(border, 0)).sum(-1) < 60


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", nargs="?", type=Path, default=default_bundle_path())
    parser.add_argument("-c", "--config", type=Path, default=Path("configs/default_model.yaml"))
    parser.add_argument("-o", "--output", type=Path, default=Path("benchmarks/results/transparent_background.json"))
    args = parser.parse_args(argv)

    settings = load_settings(args.config)
    manifest = manifest_for(settings.dataset)
    predictor = Predictor(args.bundle, threads=2)
    rows = manifest.split("test")
    rows_out = {"original photo": 0, **dict.fromkeys(FILLS, 0), f"composited over BACKGROUND {BACKGROUND}": 0}
    fractions = []
    for row in rows:
        rgb = np.asarray(Image.open(settings.dataset.root / row.path).convert("RGB"))
        mask = cut_out(rgb)
        fractions.append(float(mask.mean()))
        guesses = {"original photo": predictor.predict_one(Image.fromarray(rgb)).label}
        for name, colour in FILLS.items():
            filled = rgb.copy()
            filled[mask] = colour
            guesses[name] = predictor.predict_one(Image.fromarray(filled)).label
        rgba = np.dstack([rgb, np.where(mask, 0, 255).astype(np.uint8)])
        rgba[mask, :3] = 0  # what lies under the transparent pixels must not matter
        png = io.BytesIO()
        Image.fromarray(rgba, "RGBA").save(png, "PNG")
        guesses[f"composited over BACKGROUND {BACKGROUND}"] = predictor.predict_one(png.getvalue()).label
        for name, label in guesses.items():
            rows_out[name] += label == row.label

    results = [{"background": k, "accuracy": v / len(rows), "correct": v} for k, v in rows_out.items()]
    print(f"{len(rows)} test photos, median background fraction {np.median(fractions):.2f}\n")
    print(f"{'transparent pixels become':<46} {'accuracy':>9}")
    for r in results:
        print(f"{r['background']:<46} {100 * r['accuracy']:8.2f} %")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(
        json.dumps(
            {
                "when": datetime.now(UTC).isoformat(timespec="seconds"),
                "machine": platform.processor() or platform.machine(),
                "bundle": str(args.bundle),
                "images": len(rows),
                "median_background_fraction": float(np.median(fractions)),
                "results": results,
            },
            indent=2,
        )
        + "\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
