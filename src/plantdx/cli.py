"""The ``plantdx`` command: each command a thin shell over a library function.

Stage modules are imported inside the command that needs them, so ``plantdx data check`` does not pay for torch.
"""

from __future__ import annotations

import json
import signal
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
    if stats.unreadable or stats.other_files:  # left out of the counts above: said, not dropped
        console.print(
            f"[yellow]not counted: {stats.unreadable} unreadable images, {stats.other_files} files that are not "
            "images; `plantdx data check` lists them[/yellow]"
        )


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

    settings = _settings(config, set_)
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
                    "command": _command("train", config, set_),
                    **({"resumed_from": str(resume)} if resume is not None else {}),
                },
                indent=2,
            )
        )
    console.print(result.test.classification_report(), soft_wrap=True, highlight=False)
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
    console.print(result.report.classification_report(), soft_wrap=True, highlight=False)
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
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Write a model bundle: ONNX, INT8 (when it earns its place), TorchScript, calibration, drift reference, card."""
    from plantdx.export import EXPORT_STEPS, export

    settings = _settings(config, set_)
    extra: dict[str, Any] = {"export_command": _command("export", config, set_)}
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
    with _progress() as progress:
        task = progress.add_task("loading the checkpoint", total=len(EXPORT_STEPS))

        def on_step(name: str) -> None:
            progress.update(task, description=name, completed=EXPORT_STEPS.index(name))

        result = export(
            settings, output, run_id=run_id, checkpoint=checkpoint, version=version, extra_card=extra, on_step=on_step
        )
    _print_card(result.card)
    console.print(f"bundle written to {result.bundle}")
    if register:
        _register(settings, result.bundle, run_id)


def _command(name: str, config: Path | None, overrides: list[str] | None) -> str:
    """The command as a person would retype it (recorded in result files and bundle cards)."""
    parts = ["plantdx", name]
    if config is not None:
        parts += ["-c", str(config)]
    for item in overrides or []:
        parts += ["--set", item]
    return " ".join(parts)


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
    from plantdx.train import git_commit

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
    _register(_settings(config, set_), bundle, run_id)


@app.command()
def promote(
    version: Annotated[str | None, typer.Option(help="Version to promote (default: the challenger).")] = None,
    force: Annotated[bool, typer.Option(help="Promote even if the gate refuses; recorded as a tag.")] = False,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Move the champion alias to a version that beats the current champion (the gate says why not)."""
    from plantdx.registry import CHAMPION, Registry

    settings = _settings(config, set_)
    registry = Registry(settings.tracking, settings.gate)
    result = registry.promote(version, force=force)
    note = f" (forced past: {'; '.join(result.reasons)})" if result.reasons else ""
    console.print(f"{registry.name} v{result.candidate} is now {CHAMPION}{note}")


@app.command()
def rollback(config: ConfigOption = None, set_: SetOption = None) -> None:
    """Move the champion alias back to the previous champion."""
    from plantdx.registry import Registry

    settings = _settings(config, set_)
    info = Registry(settings.tracking, settings.gate).rollback()
    console.print(f"{info.name} v{info.version} is champion again")


def _num(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


@app.command()
def bench(
    bundle: Annotated[Path | None, typer.Argument(help="Bundle folder (default: the bundled model).")] = None,
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
    from plantdx.inference import default_bundle_path

    folder = bundle or default_bundle_path()
    if checkpoint is not None and not checkpoint.is_file():
        raise PlantdxError(f"checkpoint not found: {checkpoint}")
    with _progress() as progress:
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
    model: Annotated[Path | None, typer.Option(help="Bundle folder (default: the bundled model).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    top_k: Annotated[int, typer.Option(min=1, help="How many classes to list.")] = 3,
) -> None:
    """Diagnose leaf photos with a bundle (ONNX Runtime; no torch needed)."""
    from plantdx.inference import Predictor, default_bundle_path

    predictor = Predictor(model or default_bundle_path(), top_k=top_k)
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
    model: Annotated[Path | None, typer.Option(help="Bundle folder (default: the bundled model).")] = None,
) -> None:
    """Where the model looked: a class-activation heat map over the photo's centre crop (PNG)."""
    from PIL import Image

    from plantdx.images import load_rgb, model_view
    from plantdx.inference import Predictor, default_bundle_path

    if not image.is_file():
        raise PlantdxError(f"image not found: {image}")
    predictor = Predictor(model or default_bundle_path())
    try:
        photo = load_rgb(image, predictor.resize)
    except OSError as exc:
        raise PlantdxError(f"cannot read {image} as an image: {exc}") from None
    if not predictor.can_explain:
        architecture = predictor.bundle.card.get("architecture")
        raise PlantdxError(f"the {architecture} bundle has no class-activation output, so no heat map can be drawn")
    prediction, png = predictor.explain(photo)
    import io

    heat = Image.open(io.BytesIO(png))
    base = Image.fromarray(model_view(photo, predictor.spec)).convert("RGBA")
    try:
        Image.alpha_composite(base, heat).convert("RGB").save(output)
    except ValueError as exc:  # Pillow picks the format by extension: a folder, or "heat" without one
        raise PlantdxError(f"cannot write {output}: {exc}; give a file name such as heat.png") from None
    console.print(f"{prediction.label} ({prediction.confidence:.1%}); heat map over the model's view: {output}")


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Interface to bind (default serve.host: 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default serve.port: 8000).")] = None,
    model: Annotated[str | None, typer.Option(help="Bundle folder or models:/plantdx@champion.")] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Run the diagnosis service (one uvicorn worker; scale with processes or pods)."""
    import uvicorn

    from plantdx.serve import create_app

    items = list(set_ or [])
    for key, value in (("host", host), ("port", port), ("model", model)):
        if value is not None:
            items.append(f"serve.{key}={json.dumps(value)}")
    settings = load_settings(config, items)
    cfg = settings.serve
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings),
            host=cfg.host,
            port=cfg.port,
            workers=1,
            # asyncio, not uvloop: under 3x overload uvloop left new connections waiting 2-5 s for their first
            # byte (even a fast 503) while it served the open ones; the asyncio loop answered them in ~0.1 s, at
            # the same throughput (docs/reliability.md).
            loop="asyncio",
            log_config=None,
            access_log=False,  # plantdx logs one JSON line per request itself
            proxy_headers=bool(cfg.trusted_proxies),
            forwarded_allow_ips=",".join(cfg.trusted_proxies) or None,
            timeout_graceful_shutdown=int(cfg.drain_timeout_s),
        )
    )
    # uvicorn drains on SIGTERM, then re-raises the signal so the process would die by it; a drained service has
    # shut down as asked, so it exits 0 (what Kubernetes and systemd read as a clean stop).
    signal.signal(signal.SIGTERM, lambda *_: None)
    server.run()


@app.command()
def worker(
    concurrency: Annotated[int, typer.Option(min=1, help="Jobs at once in this worker (1: one process).")] = 1,
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
    run_worker(settings, concurrency=concurrency)


def _baseline_of(settings: Settings, model: str | None) -> tuple[dict[str, Any], str]:
    """The drift baseline: ``reference.json`` of the given (or served) model, and the version its predictions
    are logged under (the service's naming), so that only that model's rows are judged against it."""
    from plantdx.bundle import load_bundle
    from plantdx.inference import default_bundle_path

    spec = model or settings.serve.model
    if spec is not None and spec.startswith("models:/"):
        from plantdx.registry import Registry, parse_model_uri

        name, alias = parse_model_uri(spec)
        tracking = settings.tracking.model_copy(update={"registered_model": name})
        bundle = Registry(tracking, settings.gate).resolve(alias, cache_dir=Path(".plantdx") / "bundles")
        return bundle.reference, bundle.path.name  # the registry version, as the service names it
    bundle = load_bundle(Path(spec) if spec else default_bundle_path())
    return bundle.reference, bundle.version


@app.command()
def monitor(
    last: Annotated[
        int | None, typer.Option(help="Window: the last N logged predictions (default monitor.window).")
    ] = None,
    since: Annotated[str | None, typer.Option(help="Window start, ISO time (e.g. 2026-11-27T08:00:00+00:00).")] = None,
    until: Annotated[str | None, typer.Option(help="Window end, ISO time (exclusive).")] = None,
    model: Annotated[
        str | None,
        typer.Option(
            help="Bundle or models:/name@alias (default serve.model): its reference is the baseline, and only "
            "the predictions it made are judged."
        ),
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Folder for the HTML report and JSON summary.")] = None,
    fail_on_drift: Annotated[bool, typer.Option(help="Exit 1 when drift is detected (for cron and CI).")] = False,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Drift of logged predictions against the model's reference profile (Evidently report), and live accuracy."""
    from datetime import datetime

    from plantdx.monitor.drift import NotEnoughDataError, check_drift
    from plantdx.monitor.log import PredictionLog

    settings = _settings(config, set_)
    cfg = settings.monitor
    if cfg.log_url is None:
        raise PlantdxError("monitor.log_url is not set: there is no prediction log to read")
    try:
        start = datetime.fromisoformat(since) if since else None
        end = datetime.fromisoformat(until) if until else None
    except ValueError as exc:
        raise PlantdxError(f"--since/--until must be ISO times: {exc}") from None
    store = PredictionLog(cfg.log_url)
    try:
        window = last if last is not None else (None if start or end else cfg.window)
        rows = store.window(last=window, since=start, until=end)
        accuracy, labelled = store.live_accuracy(cfg.feedback_window)
    finally:
        store.close()
    try:
        reference, version = _baseline_of(settings, model)
        result = check_drift(rows, reference, cfg, model_version=version)
    except NotEnoughDataError as exc:
        raise PlantdxError(str(exc)) from None
    folder = out or cfg.report_dir
    html = result.save_html(folder / "drift_report.html")
    (folder / "drift_summary.json").write_text(json.dumps(result.summary, indent=2) + "\n")
    s = result.summary
    table = Table(title="drift" + (" DETECTED" if result.detected else ": none"), show_header=False)
    table.add_row("window", f"{s['window']['size']} predictions, {s['window']['from']} .. {s['window']['to']}")
    table.add_row(
        "drifted columns",
        f"{len(s['drifted_columns'])} of {len(s['columns'])}: {', '.join(s['drifted_columns']) or '-'}",
    )
    table.add_row("prediction / confidence drift", f"{s['prediction_drift']} / {s['confidence_drift']}")
    table.add_row("mean confidence", f"{s['mean_confidence']:.3f} (reference {s['reference_mean_confidence']:.3f})")
    table.add_row("abstained", f"{s['abstain_rate']:.1%}")
    table.add_row(
        "live accuracy", f"{accuracy:.1%} over {labelled} labelled" if accuracy is not None else "no feedback yet"
    )
    table.add_row("report", f"{html}  ({folder / 'drift_summary.json'})")
    console.print(table)
    if fail_on_drift and result.detected:
        raise typer.Exit(1)


@app.command()
def retrain(
    min_feedback: Annotated[int, typer.Option(help="Refuse to train with fewer labelled feedback photos.")] = 1,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Original data + labelled feedback photos -> train a challenger -> register -> promote only through the gate."""
    from plantdx.retrain import retrain as run_retrain

    result = run_retrain(_settings(config, set_), min_feedback=min_feedback)
    skipped = ", ".join(f"{n} {why}" for why, n in result.skipped.items()) or "none"
    console.print(f"trained on the dataset + {result.feedback_images} feedback photos (skipped: {skipped})")
    console.print(f"registered v{result.version} (run {result.run_id}); work folder {result.run_dir}")
    if result.accepted:
        console.print(f"gate accepted: v{result.version} is champion (was v{result.champion_before})")
    else:
        console.print(f"gate refused: champion stays v{result.champion_after}: " + "; ".join(result.reasons))


def main() -> None:
    """Console entry point: domain errors, and the file-system and MLflow errors a person can act on (a folder
    where a file is wanted, an unusable tracking URI), become one line on stderr and a non-zero exit. Other errors
    are bugs or unnamed I/O failures and keep their traceback."""
    try:
        app()
    except PlantdxError as exc:
        _fail(str(exc), exc.exit_code)
    except OSError as exc:
        if exc.filename is None:  # not about a path the user gave (a truncated image, a socket): keep the traceback
            raise
        _fail(f"{exc.strerror or type(exc).__name__}: {exc.filename}", 1)
    except Exception as exc:
        # MlflowException by name: importing mlflow here would add two seconds to every command
        if not any(c.__name__ == "MlflowException" and c.__module__.startswith("mlflow") for c in type(exc).__mro__):
            raise
        _fail(f"MLflow: {getattr(exc, 'message', exc)}", 1)


def _fail(message: str, code: int) -> None:
    err_console.print(f"[red]error:[/red] {message}", soft_wrap=True, highlight=False)
    sys.exit(code)


if __name__ == "__main__":
    main()
