"""Federated (Flower) against central training and against each farm alone, at equal total local epochs.

    python benchmarks/federated.py [--rounds 5] [--local-epochs 2] [--per-class 100] [--only fedavg/crop,...]

For each partition (IID, by crop, by photo series, by source) FedAvg and FedProx train ``plant_cnn`` on three farms
for ``--rounds`` rounds of ``--local-epochs`` local epochs, with real SuperLink and SuperNode processes (``plantdx
federate``); central training on the same images runs as many epochs in all (``plantdx train``), and so does each farm
alone on its own partition. Every model is scored on the same central test split. The source partition (lab farms
and a farm of field photos) also runs with BatchNorm kept local (FedBN), and IID once with client-side differential
privacy. Reported: test accuracy and macro-F1, the round at which validation accuracy first reached 95 %, payload
bytes per round, the ClientApp start-up paid every round, and wall time. Writes ``benchmarks/results/federated.json``
after every run, so an interrupted benchmark keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from plantdx.config import Settings, load_settings
from plantdx.data.split import Manifest, read_manifest, write_manifest
from plantdx.federate.partition import read_partition
from plantdx.federate.run import GLOBAL_FILE, federate

CONFIG = Path("configs/federated.yaml")
TARGET = 0.95
LAB = "../shared/data/plantvillage"
FIELD = "field=../shared/data/plantdoc-field"


def scored(settings: Settings, run_dir: Path) -> dict[str, float]:
    """The final global model on the central test split, through the same scorer the server uses on validation."""
    import torch

    from plantdx.federate.training import CentralScorer

    plan = json.loads((run_dir / "plan.json").read_text())
    manifest = read_manifest(run_dir / "manifest.csv")
    scorer = CentralScorer(plan["recipe"], settings.dataset, manifest.split("test"))
    state = torch.load(run_dir / GLOBAL_FILE, weights_only=True)
    return scorer.score({k: v.numpy() for k, v in state.items()})


def run_federated(settings: Settings) -> dict[str, Any]:
    started = time.perf_counter()
    result = federate(settings)
    rounds = [r for r in result.rounds if r["round"] > 0]
    reached = next((r["round"] for r in result.rounds if r["val_acc"] >= TARGET), None)
    startup = [a["startup-s"] for r in rounds for a in r["accepted"] if a.get("startup-s", -1) >= 0]
    imports = [a["import-s"] for r in rounds for a in r["accepted"]]
    fit = [a["fit-s"] for r in rounds for a in r["accepted"]]
    test = scored(settings, result.run_dir)
    return {
        "test_accuracy": test["acc"],
        "test_f1_macro": test["f1_macro"],
        "final_val_accuracy": result.rounds[-1]["val_acc"],
        "val_accuracy_by_round": [round(r["val_acc"], 4) for r in result.rounds],
        "rounds_to_95_val": reached,
        "valid_rounds": result.valid_rounds,
        "bytes_per_round": statistics.mean(r["bytes_sent"] + r["bytes_received"] for r in rounds),
        "clientapp_startup_s": statistics.mean(startup) if startup else None,
        "clientapp_import_s": statistics.mean(imports),
        "local_fit_s": statistics.mean(fit),
        "round_wall_s": statistics.mean(r["wall_s"] for r in rounds),
        "wall_s": time.perf_counter() - started,
        "farms": [{"name": f.name, "what": f.description, "images": len(f.rows)} for f in result.partition.farms]
        if result.partition
        else [],
        "run_dir": str(result.run_dir),
    }


def run_central(settings: Settings) -> dict[str, Any]:
    from plantdx.train import train

    started = time.perf_counter()
    result = train(settings)
    assert result.test is not None
    return {
        "test_accuracy": result.test.accuracy,
        "test_f1_macro": result.test.f1_macro,
        "wall_s": time.perf_counter() - started,
    }


def solo_manifest(run_dir: Path, farm: str, out: Path) -> Path:
    """A farm's own training photos with the central validation and test splits: the farm alone, scored alike."""
    central = read_manifest(run_dir / "manifest.csv")
    mine = read_partition(run_dir / "partition").farm(farm).rows
    return write_manifest(Manifest(tuple(mine) + tuple(r for r in central.rows if r.split != "train")), out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--local-epochs", type=int, default=2, help="per round; central and solo: rounds x this")
    parser.add_argument("--per-class", type=int, default=100, help="lab photos a class (dataset.max_per_class)")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--only", default="", help="comma-separated run names to (re)run; the others are kept")
    parser.add_argument("-o", "--output", type=Path, default=Path("benchmarks/results/federated.json"))
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="plantdx-fedbench-"))
    base = [
        f"dataset.max_per_class={args.per_class}",
        f"dataset.image_size={args.image_size}",
        f"train.output_dir={work / 'runs'}",
        f"tracking.uri=sqlite:///{work / 'mlflow.db'}",
        f"tracking.artifact_location={work / 'mlartifacts'}",
        "train.scheduler=cosine",
        "train.early_stopping_patience=1000",
        f"train.max_epochs={args.rounds * args.local_epochs}",
        f"federate.rounds={args.rounds}",
        f"federate.local_epochs={args.local_epochs}",
        "federate.clients=3",
        "federate.min_replies=3",
        "federate.register_model=false",
        "federate.deadline_s=3600",
    ]
    data = {  # each split once (its manifest file), shared by the central, federated and solo runs on it
        "lab": [f"dataset.root={LAB}", f"dataset.manifest={work / 'manifest-lab.csv'}"],
        "lab+field": [f"dataset.root={LAB}:{FIELD}", f"dataset.manifest={work / 'manifest-lab-field.csv'}"],
    }
    # The goal first (by crop), then the other partitions, FedBN and DP, then FedProx on the rest.
    order = [
        ("fedavg", "crop"),
        ("fedprox", "crop"),
        ("fedavg", "iid"),
        ("fedavg", "source"),
        ("fedavg", "series"),
        ("fedprox", "iid"),
        ("fedprox", "source"),
        ("fedprox", "series"),
    ]
    plans: list[tuple[str, str, list[str]]] = []  # name, data, overrides
    for strategy, partition in order:
        kind = "lab+field" if partition == "source" else "lab"
        plans.append(
            (f"{strategy}/{partition}", kind, [f"federate.partition={partition}", f"federate.strategy={strategy}"])
        )
    plans.insert(5, ("fedavg/source/fedbn", "lab+field", ["federate.partition=source", "federate.batchnorm=local"]))
    dp = ["federate.partition=iid", "federate.dp_noise_multiplier=0.01", "federate.dp_clipping_norm=1.0"]
    plans.insert(6, ("fedavg/iid/dp", "lab", dp))
    results: dict[str, Any] = json.loads(args.output.read_text()) if args.output.is_file() else {}
    runs = results.setdefault("runs", {})
    only = {n for n in args.only.split(",") if n}
    results |= {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "recipe": f"{CONFIG} + plant_cnn width 0.5 at {args.image_size} px, {args.per_class} lab photos a class, "
        f"{args.rounds} rounds x {args.local_epochs} local epochs = {args.rounds * args.local_epochs} epochs central "
        "and solo",
        "target_val_accuracy": TARGET,
    }

    def save() -> None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(results, indent=2) + "\n")

    for kind, overrides in data.items():
        name = f"central/{kind}"
        if name in runs and name not in only:
            continue
        runs[name] = run_central(load_settings(CONFIG, [*base, *overrides]))
        print(name, runs[name], flush=True)
        save()
    for name, kind, overrides in plans:
        if name in runs and name not in only:
            continue
        settings = load_settings(CONFIG, [*base, *data[kind], *overrides])
        runs[name] = run_federated(settings)
        print(name, {k: v for k, v in runs[name].items() if k != "val_accuracy_by_round"}, flush=True)
        if name.startswith("fedavg/") and name.count("/") == 1:  # each farm alone, once per partition
            run_dir = Path(runs[name]["run_dir"])
            solos = []
            for farm in runs[name]["farms"]:
                manifest = solo_manifest(run_dir, farm["name"], work / f"{name.replace('/', '-')}-{farm['name']}.csv")
                solo = run_central(load_settings(CONFIG, [*base, data[kind][0], f"dataset.manifest={manifest}"]))
                solos.append({**farm, **solo})
            runs[name]["solo"] = solos
        save()
    print_table(results)
    return 0


def print_table(results: dict[str, Any]) -> None:
    runs = results["runs"]
    heads = ("test acc", "macro-F1", "95% val at", "MB/round", "start-up s", "wall s")
    print(f"{'run':24} " + " ".join(f"{h:>{w}}" for h, w in zip(heads, (9, 9, 11, 9, 10, 7), strict=True)))
    for name, r in runs.items():
        reached = r.get("rounds_to_95_val")
        mb = r.get("bytes_per_round")
        startup = r.get("clientapp_startup_s")
        print(
            f"{name:24} {r['test_accuracy']:9.4f} {r['test_f1_macro']:9.4f} "
            f"{(str(reached) if reached else '-') if 'rounds_to_95_val' in r else '':>11} "
            f"{(f'{mb / 2**20:.2f}' if mb else ''):>9} {(f'{startup:.1f}' if startup else ''):>10} {r['wall_s']:7.0f}"
        )
        for solo in r.get("solo", []):
            print(f"  alone: {solo['name']} ({solo['what']}, {solo['images']} photos) {solo['test_accuracy']:.4f}")


if __name__ == "__main__":
    raise SystemExit(main())
