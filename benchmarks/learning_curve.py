"""How test error falls with the number of training images, for the shipped recipe: is more data the way to 99 %?

    python benchmarks/learning_curve.py RUN_ID [RUN_ID ...] [-c configs/default_model.yaml]

Each run is one MLflow run of ``plantdx train`` with the shipped recipe (``configs/default_model.yaml``) and a
different share of the images (``configs/learning_curve_*.yaml``: ``dataset.train_fraction``; ``default_model_refit``:
train + val). How many images each learnt from is recomputed from its own manifest and recorded settings
(``load_trained``), its test scores are the ones ``train`` logged (the checkpoint chosen on validation, scored on
the 851 test photos). A power law ``errors = a * n**-b`` is fitted to the points by least squares in log-log space and
solved for the 8 errors that 99.0 % allows. Prints a table and writes ``benchmarks/results/learning_curve.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from plantdx.checkpoints import load_trained
from plantdx.config import load_settings
from plantdx.data.datamodule import training_rows

TARGET_ACCURACY = 0.99


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="MLflow run ids of the shipped recipe at different data sizes")
    parser.add_argument("-c", "--config", type=Path, default=Path("configs/default_model.yaml"))
    parser.add_argument("-o", "--output", type=Path, default=Path("benchmarks/results/learning_curve.json"))
    args = parser.parse_args(argv)

    import mlflow

    settings = load_settings(args.config)
    client = mlflow.MlflowClient(settings.tracking.uri)
    points = []
    for run_id in args.runs:
        trained = load_trained(settings, run_id=run_id)
        metrics = client.get_run(run_id).data.metrics
        n_test = len(trained.manifest.split("test"))
        accuracy = metrics["test/acc"]
        points.append(
            {
                "run_id": run_id,
                "train_images": len(training_rows(trained.dataset, trained.manifest)),
                "train_fraction": trained.dataset.train_fraction,
                "train_on_val": trained.dataset.train_on_val,
                "test_images": n_test,
                "test_accuracy": accuracy,
                "test_f1_macro": metrics["test/f1_macro"],
                "test_errors": round((1 - accuracy) * n_test),
            }
        )
    points.sort(key=lambda p: p["train_images"])

    n = np.array([p["train_images"] for p in points], dtype=float)
    errors = np.array([max(p["test_errors"], 1) for p in points], dtype=float)
    fit = None
    if len(points) >= 2:
        slope, intercept = np.polyfit(np.log(n), np.log(errors), 1)
        allowed = math.floor((1 - TARGET_ACCURACY) * points[-1]["test_images"])
        needed = math.exp((math.log(allowed) - intercept) / slope) if slope < 0 else None
        fit = {"exponent_b": float(-slope), "a": float(math.exp(intercept)), "allowed_errors": allowed}
        fit["train_images_for_target"] = round(needed) if needed is not None else None

    print(f"{'train images':>12} {'share':>6} {'+val':>5} {'test acc':>9} {'macro-F1':>9} {'errors':>7}")
    for p in points:
        print(
            f"{p['train_images']:>12} {p['train_fraction']:>6.2f} {('yes' if p['train_on_val'] else 'no'):>5} "
            f"{100 * p['test_accuracy']:>8.2f}% {p['test_f1_macro']:>9.4f} {p['test_errors']:>7}"
        )
    if fit is not None:
        print(
            f"\nerrors ~ {fit['a']:.0f} * n^-{fit['exponent_b']:.2f}; {fit['allowed_errors']} errors (99.0 %) at "
            f"n ~ {fit['train_images_for_target']} training images"
        )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(
        json.dumps(
            {
                "when": datetime.now(UTC).isoformat(timespec="seconds"),
                "machine": platform.processor() or platform.machine(),
                "recipe": str(args.config),
                "points": points,
                "power_law_fit": fit,
            },
            indent=2,
        )
        + "\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
