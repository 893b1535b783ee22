"""Diagnosis and serving: ``predict``, ``explain``, ``bench``, ``serve``, ``worker``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from plantdx.cli.app import ConfigOption, SetOption, app, console, progress_bar
from plantdx.config import load_settings
from plantdx.errors import PlantdxError

if TYPE_CHECKING:
    from plantdx.inference import Predictor

ModelOption = Annotated[
    str | None,
    typer.Option(help="Bundle folder or models:/plantdx@champion (default: the bundled model).", show_default=False),
]


def _predictor(model: str | None, top_k: int = 3) -> Predictor:
    """The model a command was given, read by the same rule as the service's (``resolve_model``)."""
    from plantdx.inference import Predictor, resolve_model

    return Predictor(resolve_model(model, load_settings().tracking).bundle, top_k=top_k)


def _num(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


@app.command()
def bench(
    bundle: Annotated[
        str | None, typer.Argument(help="Bundle folder or models:/plantdx@champion (default: the bundled model).")
    ] = None,
    checkpoint: Annotated[Path | None, typer.Option(help="Lightning checkpoint, for the PyTorch eager row.")] = None,
    threads: Annotated[int, typer.Option(min=1, help="Threads for every runtime.")] = 2,
    runs: Annotated[int, typer.Option(min=10, help="Single-image runs per runtime.")] = 300,
    batch: Annotated[int, typer.Option(min=1, help="Batch size for the throughput column.")] = 32,
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the JSON results.")] = Path(
        "benchmarks/results"
    ),
) -> None:
    """Latency and throughput of PyTorch eager, TorchScript, ONNX Runtime FP32 and INT8 on this machine."""
    from plantdx.bench import RUNTIMES, bench_bundle, write_results
    from plantdx.inference import resolve_model

    folder = resolve_model(bundle, load_settings().tracking).bundle.path
    if checkpoint is not None and not checkpoint.is_file():
        raise PlantdxError(f"checkpoint not found: {checkpoint}")
    with progress_bar() as progress:
        task = progress.add_task("benchmarking", total=len(RUNTIMES))
        results = bench_bundle(
            folder,
            threads=threads,
            runs=runs,
            batch=batch,
            checkpoint=checkpoint,
            on_runtime=lambda name: progress.update(task, description=name, completed=RUNTIMES.index(name)),
        )
    table = Table(title=f"{folder} ({threads} threads)")
    for col in ("runtime", "p50 ms", "p99 ms", f"batch {batch} img/s", "note"):
        table.add_column(col, justify="left" if col in ("runtime", "note") else "right")
    for r in results:
        table.add_row(r.runtime, _num(r.p50_ms, ".2f"), _num(r.p99_ms, ".2f"), _num(r.throughput_ips, ".0f"), r.note)
    console.print(table)
    console.print(f"wrote {write_results(results, folder, threads, output, checkpoint)}")


@app.command()
def predict(
    images: Annotated[list[Path], typer.Argument(help="Leaf photos (JPEG, PNG, WebP).")],
    model: ModelOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    top_k: Annotated[int, typer.Option(min=1, help="How many classes to list.")] = 3,
) -> None:
    """Diagnose leaf photos with a bundle (ONNX Runtime; no torch needed)."""
    predictor = _predictor(model, top_k)
    rows = []
    for path in images:
        if not path.is_file():
            raise PlantdxError(f"image not found: {path}")
        try:
            rows.append((path, predictor.predict_one(path)))
        except (OSError, ValueError) as exc:
            raise PlantdxError(f"cannot read {path} as an image: {exc}") from None
    if as_json:
        out = [
            {
                "image": str(p),
                "prediction": r.label,
                "confidence": r.confidence,
                "abstained": r.abstained,
                "reason": r.reason,
                "top_k": [{"label": lbl, "probability": pr} for lbl, pr in r.top_k],
            }
            for p, r in rows
        ]
        console.print_json(json.dumps(out))
        return
    table = Table()
    for col in ("image", "diagnosis", "confidence", "top 3"):
        table.add_column(col)
    for path, r in rows:
        label = f"not sure ({r.label}?)" if r.abstained else r.label
        table.add_row(path.name, label, f"{r.confidence:.1%}", ", ".join(f"{lbl} {pr:.0%}" for lbl, pr in r.top_k))
    console.print(table)


@app.command()
def explain(
    image: Annotated[Path, typer.Argument(help="A leaf photo.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the heat map.")] = Path("heat.png"),
    model: ModelOption = None,
) -> None:
    """Where the model looked: a class-activation heat map over the photo's centre crop (PNG)."""
    from plantdx.images import load_rgb

    if not image.is_file():
        raise PlantdxError(f"image not found: {image}")
    predictor = _predictor(model)
    try:
        photo = load_rgb(image, predictor.resize)
    except OSError as exc:
        raise PlantdxError(f"cannot read {image} as an image: {exc}") from None
    if not predictor.can_explain:
        architecture = predictor.bundle.card.get("architecture")
        raise PlantdxError(f"the {architecture} bundle has no class-activation output, so no heat map can be drawn")
    diagnosis, overlay = predictor.explain_overlay(photo)
    try:
        overlay.save(output)
    except ValueError as exc:  # Pillow picks the format by extension: a folder, or "heat" without one
        raise PlantdxError(f"cannot write {output}: {exc}; give a file name such as heat.png") from None
    console.print(f"{diagnosis.label} ({diagnosis.confidence:.1%}); heat map over the model's view: {output}")


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Interface to bind (default serve.host: 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default serve.port: 8000).")] = None,
    model: Annotated[str | None, typer.Option(help="Bundle folder or models:/plantdx@champion.")] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Run the diagnosis service (one uvicorn worker; scale with processes or pods)."""
    from plantdx.serve.server import run_server

    items = list(set_ or [])
    for key, value in (("host", host), ("port", port), ("model", model)):
        if value is not None:
            items.append(f"serve.{key}={json.dumps(value)}")
    run_server(load_settings(config, items))


@app.command()
def worker(
    concurrency: Annotated[int, typer.Option(min=1, help="Jobs at once in this worker (1: one process).")] = 1,
    metrics_port: Annotated[
        int | None, typer.Option(help="Serve this worker's Prometheus metrics on this port (concurrency 1).")
    ] = None,
    model: Annotated[str | None, typer.Option(help="Bundle folder or models:/plantdx@champion.")] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Run async jobs from Redis (needs serve.redis_url); the model is loaded once per worker process."""
    from plantdx.serve.tasks import run_worker

    items = list(set_ or [])
    if model is not None:
        items.append(f"serve.model={json.dumps(model)}")
    settings = load_settings(config, items)
    if not settings.serve.redis_url:
        raise PlantdxError(
            "plantdx worker needs a Redis URL: set PLANTDX_SERVE__REDIS_URL or --set serve.redis_url=..."
        )
    run_worker(settings, concurrency=concurrency, metrics_port=metrics_port)
