"""Training and the model's way to the service: ``train``, ``evaluate``, ``export``, ``register``, ``promote``,
``rollback``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from plantdx.cli.app import ConfigOption, SetOption, app, command_line, console, progress_bar, settings_from
from plantdx.config import Settings
from plantdx.errors import PlantdxError


@app.command()
def train(
    config: ConfigOption = None,
    set_: SetOption = None,
    result_json: Annotated[
        Path | None, typer.Option(help="Also write the run id, checkpoint and test scores here (for scripts).")
    ] = None,
    resume: Annotated[
        Path | None,
        typer.Option(help="Continue an interrupted run: its folder under runs/ or a checkpoint in it; same config."),
    ] = None,
) -> None:
    """Train a model (Lightning), track it in MLflow and score it on the test split."""
    from plantdx.train import train as run_training

    settings = settings_from(config, set_)
    if result_json is not None:  # before hours of training, not after
        if result_json.is_dir():
            raise PlantdxError(f"cannot write --result-json {result_json}: it is a folder; give a file name")
        try:
            result_json.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise PlantdxError(f"cannot write --result-json {result_json}: {exc}") from None
    result = run_training(settings, resume=resume)
    if result.test is None:  # a non-zero DDP rank: rank 0 reports
        return
    if result_json is not None:
        result_json.write_text(
            json.dumps(
                {
                    "run_id": result.run_id,
                    "tracking_uri": result.tracking_uri,
                    "best_checkpoint": str(result.best_checkpoint),
                    "wall_time_s": result.wall_time_s,
                    "test_accuracy": result.test.accuracy,
                    "test_f1_macro": result.test.f1_macro,
                    "seed": settings.train.seed,
                    "command": command_line("train", config, set_),
                    **({"resumed_from": str(resume)} if resume is not None else {}),
                },
                indent=2,
            )
        )
    console.print(result.test.classification_report(), soft_wrap=True, highlight=False)
    _print_domains("test", result.test_by_domain)
    console.print(
        f"run {result.run_id} ({result.tracking_uri}) in {result.wall_time_s:.0f} s; "
        f"best checkpoint {result.best_checkpoint}"
    )


@app.command()
def evaluate(
    checkpoint: Annotated[Path | None, typer.Option(help="A Lightning checkpoint file.")] = None,
    run_id: Annotated[str | None, typer.Option(help="An MLflow run whose best checkpoint to score.")] = None,
    split: Annotated[str, typer.Option(help="train, val or test.")] = "test",
    data: Annotated[
        list[str] | None,
        typer.Option(help="Dataset folder, path or domain=path; repeat for several (default: dataset.root)."),
    ] = None,
    no_log: Annotated[bool, typer.Option("--no-log", help="Do not record an MLflow run.")] = False,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Accuracy, macro-F1, per-class scores, confusion matrix and calibration of a trained model."""
    from plantdx.evaluate import evaluate as run_evaluation

    settings = settings_from(config, set_, data)
    result = run_evaluation(settings, checkpoint=checkpoint, run_id=run_id, split=split, log_to_mlflow=not no_log)
    console.print(result.report.classification_report(), soft_wrap=True, highlight=False)
    _print_domains(split, result.by_domain)
    console.print(
        f"artifacts in {result.artifacts[0].parent}"
        + (f"; MLflow run {result.mlflow_run_id}" if result.mlflow_run_id else "")
    )


@app.command("export")
def export_cmd(
    run_id: Annotated[str | None, typer.Option(help="Export the best checkpoint of this MLflow run.")] = None,
    checkpoint: Annotated[Path | None, typer.Option(help="... or this checkpoint file.")] = None,
    version: Annotated[str | None, typer.Option(help="... or the run behind this registered version.")] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="Bundle folder to write.")] = Path("bundle"),
    register: Annotated[bool, typer.Option(help="Also register the bundle (alias challenger).")] = False,
    train_result: Annotated[
        Path | None, typer.Option(help="`plantdx train --result-json` output: its run, command and wall time.")
    ] = None,
    edge: Annotated[
        bool, typer.Option("--edge", help="Also write model.pte (ExecuTorch, XNNPACK) for native apps: the edge extra.")
    ] = False,
    edge_only: Annotated[
        Path | None,
        typer.Option(
            "--edge-only",
            help="Only (re)build model.edge.onnx, the page's offline model, in this existing bundle folder, checked "
            "against the service on its test split (no torch needed).",
        ),
    ] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Write a model bundle: ONNX, INT8 (when it earns its place), TorchScript, calibration, drift reference, the
    edge model for the offline page, card."""
    settings = settings_from(config, set_)
    if edge_only is not None:
        _edge_only(settings, edge_only, command_line("export", config, set_))
        return
    from plantdx.export import EXPORT_STEPS, export

    extra: dict[str, Any] = {"export_command": command_line("export", config, set_)}
    if train_result is not None:
        try:
            training = json.loads(train_result.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise PlantdxError(f"cannot read --train-result {train_result}: {exc}") from None
        if not isinstance(training, dict):
            raise PlantdxError(f"--train-result {train_result} is not a `plantdx train --result-json` file")
        extra["training"] = training
        run_id = run_id or training.get("run_id")
    if sum(x is not None for x in (run_id, checkpoint, version)) != 1:
        raise PlantdxError("give exactly one of --run-id, --checkpoint, --version or --train-result")
    with progress_bar() as progress:
        task = progress.add_task("loading the checkpoint", total=len(EXPORT_STEPS))

        def on_step(name: str) -> None:
            progress.update(task, description=name, completed=EXPORT_STEPS.index(name))

        result = export(
            settings,
            output,
            run_id=run_id,
            checkpoint=checkpoint,
            version=version,
            extra_card=extra,
            on_step=on_step,
            native=edge,
        )
    _print_card(result.card)
    console.print(f"bundle written to {result.bundle}")
    if register:
        _register(settings, result.bundle, run_id)


def _edge_only(settings: Settings, folder: Path, command: str) -> None:
    """``model.edge.onnx`` into an existing bundle, its card rewritten (every other file is left as it is)."""
    from plantdx.bundle import load_bundle
    from plantdx.edge import dataset_of, split_crops, write_edge_model

    cfg = settings.export
    with console.status("building the edge model and checking it against the service on the test photos"):
        result = write_edge_model(
            folder,
            weights=cfg.edge_weights,
            budget_bytes=cfg.edge_budget_bytes,
            test_crops=lambda bundle: split_crops(bundle, dataset_of(bundle, settings.dataset)),
            extra={"made_by": f"{command} --edge-only {folder}"},
        )
    table = Table(title=f"edge model of {folder}")
    for col in ("weights", "bytes", "gzip bytes", "fits budget", "top-1 agreement", "abstain agreement", "max |dp|"):
        table.add_column(col, justify="right")
    for tried in load_bundle(folder).card["edge"]["tried"]:
        parity = tried["parity"] or {}
        table.add_row(
            tried["weights"],
            f"{tried['bytes']:,}",
            f"{tried['gzip_bytes']:,}",
            "yes" if tried["fits_budget"] else "no",
            f"{parity.get('top1_agreement', float('nan')):.4f}",
            f"{parity.get('abstain_agreement', float('nan')):.4f}",
            f"{parity.get('max_abs_dp', float('nan')):.2e}",
        )
    console.print(table)
    console.print(f"kept {result.weights}: {result.path} ({result.gzip_bytes:,} bytes as served)")


def _print_domains(split: str, reports: dict[str, Any]) -> None:
    """Lab, field and not-a-leaf photos apart: together they hide how the model does on the few field ones."""
    if not reports:
        return
    table = Table(title=f"{split} split by domain")
    for col in ("domain", "images", "accuracy", "macro-F1", "ECE"):
        table.add_column(col, justify="left" if col == "domain" else "right")
    for domain, r in reports.items():
        table.add_row(domain, str(r.n), f"{r.accuracy:.4f}", f"{r.f1_macro:.4f}", f"{r.ece:.4f}")
    console.print(table)


def _print_card(card: dict[str, Any]) -> None:
    m = card["metrics"]
    table = Table(title=f"{card['architecture']} bundle")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("test accuracy", f"{m['test_accuracy']:.4f}")
    table.add_row("test macro-F1", f"{m['test_f1_macro']:.4f}")
    table.add_row("test ECE (calibrated)", f"{m['test_ece']:.4f}")
    table.add_row("ONNX parity (max |diff|)", f"{card['parity']['onnx']['max_abs_logit_diff']:.2e}")
    table.add_row("ONNX p50 latency", f"{card['latency_ms']['onnx_fp32_p50']:.2f} ms")
    int8 = card["int8"]
    table.add_row("INT8", "kept" if int8.get("kept") else f"dropped: {int8.get('reason')}")
    console.print(table)


def _register(settings: Settings, bundle: Path, run_id: str | None) -> None:
    from plantdx.registry import Registry
    from plantdx.tracking import git_commit

    info = Registry(settings.tracking, settings.gate).register(bundle, run_id=run_id, git_commit=git_commit())
    console.print(f"registered {info.name} v{info.version} (alias challenger) from {info.source}")


@app.command()
def register(
    bundle: Annotated[Path, typer.Argument(help="A bundle folder (from `plantdx export`).")],
    run_id: Annotated[str | None, typer.Option(help="Run to attach it to (default: the card's run).")] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Register a bundle as a new version of the model, with alias challenger."""
    _register(settings_from(config, set_), bundle, run_id)


@app.command()
def promote(
    version: Annotated[str | None, typer.Option(help="Version to promote (default: the challenger).")] = None,
    force: Annotated[bool, typer.Option(help="Promote even if the gate refuses; recorded as a tag.")] = False,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Move the champion alias to a version that beats the current champion (the gate says why not)."""
    from plantdx.registry import CHAMPION, Registry

    settings = settings_from(config, set_)
    registry = Registry(settings.tracking, settings.gate)
    result = registry.promote(version, force=force)
    note = f" (forced past: {'; '.join(result.reasons)})" if result.reasons else ""
    console.print(f"{registry.name} v{result.candidate} is now {CHAMPION}{note}")


@app.command()
def rollback(config: ConfigOption = None, set_: SetOption = None) -> None:
    """Move the champion alias back to the previous champion."""
    from plantdx.registry import Registry

    settings = settings_from(config, set_)
    info = Registry(settings.tracking, settings.gate).rollback()
    console.print(f"{info.name} v{info.version} is champion again")
