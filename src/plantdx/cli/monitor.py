"""Beside the service: ``monitor`` (drift and live accuracy) and ``retrain`` (feedback -> challenger -> gate)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from plantdx.cli.app import ConfigOption, SetOption, app, console, settings_from
from plantdx.errors import PlantdxError


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
    watch: Annotated[
        bool, typer.Option(help="Check again every monitor.check_interval_s until stopped (beside the service).")
    ] = False,
    fail_on_drift: Annotated[bool, typer.Option(help="Exit 1 when drift is detected (for cron and CI).")] = False,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Drift of logged predictions against the model's reference profile (Evidently report), and live accuracy.

    A check of the latest window is recorded in the prediction log, where the service serves it (GET /v1/drift and
    its gauges); drift is logged and POSTed to monitor.alert_webhook. A --since/--until window is only reported.
    """
    from datetime import datetime

    from plantdx.inference import resolve_model
    from plantdx.monitor.drift import NotEnoughDataError, run_drift_check
    from plantdx.serve.middleware import configure_logging
    from plantdx.serve.prediction_log import PredictionLog

    settings = settings_from(config, set_)
    cfg = settings.monitor
    if cfg.log_url is None:
        raise PlantdxError("monitor.log_url is not set: there is no prediction log to read")
    try:
        start = datetime.fromisoformat(since) if since else None
        end = datetime.fromisoformat(until) if until else None
    except ValueError as exc:
        raise PlantdxError(f"--since/--until must be ISO times: {exc}") from None
    if watch and (start or end):
        raise PlantdxError("--watch checks the latest window again and again; it takes no --since/--until")
    configure_logging(settings.serve.log_level)
    store = PredictionLog(cfg.log_url)
    try:
        while True:
            # Resolved at every check: a promotion changes which model is served, and so what is judged.
            served = resolve_model(model or settings.serve.model, settings.tracking)
            try:
                accuracy, labelled = store.live_accuracy(cfg.feedback_window)
                result = run_drift_check(
                    store,
                    served.bundle.reference,
                    served.version,
                    cfg,
                    last=last,
                    since=start,
                    until=end,
                    out_dir=out,
                    record=start is None and end is None,
                )
            except NotEnoughDataError as exc:
                if not watch:
                    raise PlantdxError(str(exc)) from None
                console.print(f"no verdict yet: {exc}", highlight=False)
            else:
                _print_drift(result.summary, result.detected, accuracy, labelled, out or cfg.report_dir)
                if fail_on_drift and result.detected and not watch:
                    raise typer.Exit(1)
            if not watch:
                return
            time.sleep(cfg.check_interval_s)
    finally:
        store.close()


def _print_drift(s: dict[str, Any], detected: bool, accuracy: float | None, labelled: int, folder: Path) -> None:
    table = Table(title="drift" + (" DETECTED" if detected else ": none"), show_header=False)
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
    table.add_row("report", f"{folder / 'drift_report.html'}  ({folder / 'drift_summary.json'})")
    console.print(table)


@app.command()
def retrain(
    min_feedback: Annotated[int, typer.Option(help="Refuse to train with fewer labelled feedback photos.")] = 1,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Original data + labelled feedback photos -> train a challenger -> register -> promote only through the gate."""
    from plantdx.retrain import retrain as run_retrain

    result = run_retrain(settings_from(config, set_), min_feedback=min_feedback)
    skipped = ", ".join(f"{n} {why}" for why, n in result.skipped.items()) or "none"
    console.print(f"trained on the dataset + {result.feedback_images} feedback photos (skipped: {skipped})")
    console.print(f"registered v{result.version} (run {result.run_id}); work folder {result.run_dir}")
    if result.accepted:
        console.print(f"gate accepted: v{result.version} is champion (was v{result.champion_before})")
    else:
        console.print(f"gate refused: champion stays v{result.champion_after}: " + "; ".join(result.reasons))
