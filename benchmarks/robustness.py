"""Robustness of a bundle to poor photos: the test splits spoilt at fixed severities.

    .venv/bin/python benchmarks/robustness.py [BUNDLE] [-c configs/default_model.yaml]

Gaussian blur (sigma 2 px), darkening to 0.35x, Gaussian noise (sigma 0.08) and JPEG quality 12 applied to the
decoded test photos of each leaf domain (lab, field) of the bundle's own split, then diagnosed through the serving
path (``plantdx.corruptions.score_corrupted``: the function export uses for the card). Prints a table and writes
benchmarks/results/robustness.json. A benchmark: it measures, it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import platform
from datetime import UTC, datetime
from pathlib import Path

from plantdx.config import NONLEAF, load_settings
from plantdx.corruptions import CORRUPTIONS, score_corrupted
from plantdx.data.split import manifest_for
from plantdx.images import load_rgb
from plantdx.inference import Predictor, default_bundle_path

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", nargs="?", type=Path, default=default_bundle_path())
    parser.add_argument("-c", "--config", type=Path, default=Path("configs/default_model.yaml"))
    args = parser.parse_args()
    settings = load_settings(args.config)
    predictor = Predictor(args.bundle, threads=2)
    manifest = manifest_for(settings.dataset)
    card_split = predictor.bundle.card.get("data", {}).get("test_sha256")
    if card_split and card_split != manifest.test_digest:
        raise SystemExit(f"{args.bundle} was scored on another test split than {args.config} gives")
    results = {}
    for domain in [d for d in manifest.domains if d != NONLEAF]:
        rows = manifest.split("test", domain)
        photos = [load_rgb(settings.dataset.locate(r.root, r.path)) for r in rows]
        results[domain] = score_corrupted(predictor, photos, [r.label for r in rows], seed=settings.dataset.seed)
    names = ["clean", *CORRUPTIONS]
    print(f"{'domain':<8} {'corruption':<12} {'images':>6} {'accuracy':>9} {'macro-F1':>9} {'abstained':>10}")
    for domain, scores in results.items():
        for name in names:
            s = scores[name]
            figures = f"{s['images']:>6} {s['accuracy']:>9.4f} {s['f1_macro']:>9.4f} {s['abstained']:>10.1%}"
            print(f"{domain:<8} {name:<12} {figures}")
    summary = {
        domain: {
            "mean_corrupted_f1_macro": sum(scores[n]["f1_macro"] for n in CORRUPTIONS) / len(CORRUPTIONS),
            "darkened_f1_macro": scores["dark_0.35"]["f1_macro"],
        }
        for domain, scores in results.items()
    }
    for domain, s in summary.items():
        mean, dark = s["mean_corrupted_f1_macro"], s["darkened_f1_macro"]
        print(f"{domain}: mean macro-F1 under corruption {mean:.4f}, darkened {dark:.4f}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "robustness.json"
    out.write_text(
        json.dumps(
            {
                "bundle": str(args.bundle),
                "architecture": predictor.bundle.card.get("architecture"),
                "config": str(args.config),
                "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "machine": platform.machine(),
                "results": results,
                "summary": summary,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
