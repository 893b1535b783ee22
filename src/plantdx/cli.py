"""The ``plantdx`` command: each command a thin shell over a library function.

Stage modules are imported inside the command that needs them, so ``plantdx data check`` does not pay for torch.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from plantdx.config import Settings, load_settings
from plantdx.errors import PlantdxError

app = typer.Typer(
    name="plantdx",
    help="Diagnose plant diseases from leaf photos, and run the model lifecycle around it.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Check, split and describe a class-folder dataset.", no_args_is_help=True)
app.add_typer(data_app, name="data")

console = Console()
err_console = Console(stderr=True)

ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="YAML settings file (see configs/).", show_default=False)
]
SetOption = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        "-s",
        help="Override one setting, e.g. --set train.lr=0.001 (repeatable).",
        show_default=False,
    ),
]
RootArgument = Annotated[
    Path | None,
    typer.Argument(
        help="Dataset folder (one folder per class). Default: dataset.root of the settings.",
        show_default=False,
    ),
]


def _settings(config: Path | None, overrides: list[str] | None, root: Path | None = None) -> Settings:
    items = list(overrides or [])
    if root is not None:
        items.append(f"dataset.root={json.dumps(str(root))}")
    return load_settings(config, items)


def _progress() -> Progress:
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
    )


def _scan(settings: Settings) -> Any:
    from plantdx.data.scan import scan_dataset

    with _progress() as progress:
        task = progress.add_task("checking images", total=None)
        return scan_dataset(
            settings.dataset.root,
            min_images_per_class=settings.dataset.min_images_per_class,
            progress=lambda done, total: progress.update(task, completed=done, total=total),
        )


@data_app.command("check")
def data_check(
    root: RootArgument = None,
    strict: Annotated[bool, typer.Option(help="Exit non-zero when any problem is found.")] = False,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Decode every image and report corrupt, mislabelled, duplicate and unsupported files and tiny classes."""
    settings = _settings(config, set_, root)
    report = _scan(settings)
    table = Table(title=f"{settings.dataset.root}")
    table.add_column("class")
    table.add_column("images", justify="right")
    for name, n in report.class_counts.items():
        table.add_row(name, str(n))
    table.add_row("[bold]total", f"[bold]{len(report.records)}")
    console.print(table)
    if report.ok:
        console.print("[green]no problems found")
        return
    console.print(f"[bold red]{len(report.issues)} problems:")
    width = max(len(i.kind) for i in report.issues)
    for issue in report.issues:  # one line each, never wrapped: easy to grep
        console.print(f"  {issue.kind:<{width}}  {issue.path}: {issue.detail}", soft_wrap=True, highlight=False)
    if strict:
        raise typer.Exit(1)


@data_app.command("split")
def data_split(
    root: RootArgument = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="Manifest CSV to write.")] = Path("manifest.csv"),
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Write the deterministic, leakage-free train/val/test manifest (path, label, split, sha256, group)."""
    from plantdx.data.split import check_no_leakage, manifest_for

    settings = _settings(config, set_, root)
    dataset = settings.dataset.model_copy(update={"manifest": output})
    if output.exists():
        output.unlink()  # `data split` always makes a fresh one
    with _progress() as progress:
        task = progress.add_task("hashing and checking images", total=None)
        manifest = manifest_for(dataset, progress=lambda d, t: progress.update(task, completed=d, total=t))
    leaks = check_no_leakage(manifest)
    if leaks:  # would be a bug in the splitter: say so loudly
        raise PlantdxError(f"split leaks {len(leaks)} groups across splits, e.g. {leaks[0]}")
    _print_split_counts(manifest)
    console.print(f"wrote {output} ({len(manifest.rows)} images, sha256 {manifest.digest[:12]})")


def _print_split_counts(manifest: Any) -> None:
    table = Table()
    for col in ("class", "train", "val", "test", "total"):
        table.add_column(col, justify="left" if col == "class" else "right")
    totals = dict.fromkeys(("train", "val", "test"), 0)
    for name, counts in manifest.counts().items():
        table.add_row(name, *(str(counts[s]) for s in totals), str(sum(counts.values())))
        for s in totals:
            totals[s] += counts[s]
    table.add_row("[bold]total", *(f"[bold]{v}" for v in totals.values()), f"[bold]{sum(totals.values())}")
    console.print(table)


@data_app.command("stats")
def data_stats(root: RootArgument = None, config: ConfigOption = None, set_: SetOption = None) -> None:
    """Class balance, image sizes and formats of a dataset."""
    from plantdx.data.stats import dataset_stats

    settings = _settings(config, set_, root)
    with _progress() as progress:
        task = progress.add_task("reading image headers", total=None)
        stats = dataset_stats(settings.dataset.root, progress=lambda d, t: progress.update(task, completed=d, total=t))
    table = Table(title=f"{stats.images} images in {len(stats.class_counts)} classes")
    table.add_column("class")
    table.add_column("images", justify="right")
    table.add_column("share", justify="right")
    for name, n in stats.class_counts.items():
        table.add_row(name, str(n), f"{n / max(1, stats.images):.1%}")
    console.print(table)
    console.print(f"imbalance (largest / smallest class): {stats.imbalance_ratio:.2f}")
    console.print(f"formats: {stats.formats}")
    console.print(f"sizes (w x h): {stats.sizes}")
    console.print(f"bytes: {stats.total_bytes / 2**20:.1f} MiB")


@app.command()
def train(config: ConfigOption = None, set_: SetOption = None) -> None:
    """Train a model (Lightning), track it in MLflow and score it on the test split."""
    from plantdx.train import train as run_training

    settings = _settings(config, set_)
    result = run_training(settings)
    if result.test is None:  # a non-zero DDP rank: rank 0 reports
        return
    console.print(result.test.classification_report())
    console.print(
        f"run {result.run_id} ({result.tracking_uri}) in {result.wall_time_s:.0f} s; "
        f"best checkpoint {result.best_checkpoint}"
    )


@app.command()
def evaluate(
    checkpoint: Annotated[Path | None, typer.Option(help="A Lightning checkpoint file.")] = None,
    run_id: Annotated[str | None, typer.Option(help="An MLflow run whose best checkpoint to score.")] = None,
    split: Annotated[str, typer.Option(help="train, val or test.")] = "test",
    data: Annotated[Path | None, typer.Option(help="Dataset folder (default: dataset.root).")] = None,
    no_log: Annotated[bool, typer.Option("--no-log", help="Do not record an MLflow run.")] = False,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Accuracy, macro-F1, per-class scores, confusion matrix and calibration of a trained model."""
    from plantdx.evaluate import evaluate as run_evaluation

    settings = _settings(config, set_, data)
    result = run_evaluation(settings, checkpoint=checkpoint, run_id=run_id, split=split, log_to_mlflow=not no_log)
    console.print(result.report.classification_report())
    console.print(
        f"artifacts in {result.artifacts[0].parent}"
        + (f"; MLflow run {result.mlflow_run_id}" if result.mlflow_run_id else "")
    )


def main() -> None:
    """Console entry point: domain errors become one line on stderr and a non-zero exit."""
    try:
        app()
    except PlantdxError as exc:
        err_console.print(f"[red]error:[/red] {exc}", soft_wrap=True, highlight=False)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
