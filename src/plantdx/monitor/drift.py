"""Drift: a window of the prediction log against the bundle's reference profile, as an Evidently 0.7 report.

Every numeric column (colour, brightness, contrast, saturation, sharpness, embedding components, confidence) gets
a two-sample Kolmogorov-Smirnov test and the predicted class a chi-square test; a column drifts when its p-value is
below ``column_threshold`` and the window drifts when at least ``drift_share`` of the columns do. The verdicts are
Evidently's own per-column tests, so the JSON summary and the HTML report can't disagree.
"""

from __future__ import annotations

import json
import logging
import os
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("DO_NOT_TRACK", "1")  # evidently reports usage unless told not to; this runs offline

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from evidently import DataDefinition, Dataset, Report  # noqa: E402
from evidently.presets import DataDriftPreset  # noqa: E402

from plantdx.config import MonitorConfig  # noqa: E402
from plantdx.serve.prediction_log import PredictionLog  # noqa: E402

log = logging.getLogger("plantdx.monitor")

PREDICTED = "predicted"
CONFIDENCE = "confidence"
NUM_METHOD = "ks"
CAT_METHOD = "chisquare"


class NotEnoughDataError(ValueError):
    """The window is too small for a verdict; ``size`` is how many of the model's predictions it held."""

    def __init__(self, message: str, size: int = 0) -> None:
        super().__init__(message)
        self.size = size


@dataclass
class DriftResult:
    summary: dict[str, Any]
    snapshot: Any  # evidently.core.report.Snapshot

    @property
    def detected(self) -> bool:
        return bool(self.summary["drift_detected"])

    def save_html(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.snapshot.save_html(str(path))
        return path


def reference_frame(reference: dict[str, Any]) -> pd.DataFrame:
    frame = pd.DataFrame(reference["rows"], columns=reference["columns"])
    frame[PREDICTED] = reference["predicted_class"]
    return frame


def current_frame(rows: Sequence[dict[str, Any]], reference: dict[str, Any]) -> pd.DataFrame:
    """Logged rows in the reference's columns; embedding columns the log lacks (no embedding output) stay NaN."""
    columns = list(reference["columns"])
    data = {c: [r.get(c) for r in rows] for c in columns}
    frame = pd.DataFrame(data, columns=columns, dtype="float64")
    frame[PREDICTED] = [str(r.get(PREDICTED)) for r in rows]
    return frame


def _monitored(reference: pd.DataFrame, current: pd.DataFrame) -> list[str]:
    """Numeric columns with values on both sides (a model without embeddings logs none)."""
    numeric = [c for c in reference.columns if c != PREDICTED]
    return [c for c in numeric if current[c].notna().sum() >= 2 and reference[c].notna().sum() >= 2]


def of_version(rows: Sequence[dict[str, Any]], version: str | None) -> list[dict[str, Any]]:
    """The logged rows one model version made: the only ones its reference can judge."""
    return [r for r in rows if r.get("model_version") == version]


def check_drift(
    rows: Sequence[dict[str, Any]],
    reference: dict[str, Any],
    cfg: MonitorConfig,
    *,
    min_window: int | None = None,
    model_version: str | None = None,
) -> DriftResult:
    """Run the report on a window of logged predictions (dicts with the log's columns, oldest first).

    Only one model version's rows count (``model_version``, default: the newest row's): embeddings, confidences
    and classes belong to the model that made them, and rows from before a promotion would read as drift against
    the new model's reference.
    """
    version = model_version if model_version is not None else (rows[-1].get("model_version") if rows else None)
    rows = of_version(rows, version)
    need = cfg.min_window if min_window is None else min_window
    if len(rows) < need:
        raise NotEnoughDataError(
            f"{len(rows)} logged predictions of model {version} in the window; a verdict needs at least {need}",
            len(rows),
        )
    ref = reference_frame(reference)
    cur = current_frame(rows, reference)
    numeric = _monitored(ref, cur)
    columns = [*numeric, PREDICTED]
    definition = DataDefinition(numerical_columns=numeric, categorical_columns=[PREDICTED])
    report = Report(
        [
            DataDriftPreset(
                columns=columns,
                drift_share=cfg.drift_share,
                num_method=NUM_METHOD,
                cat_method=CAT_METHOD,
                threshold=cfg.column_threshold,
            )
        ],
        include_tests=True,
    )
    snapshot = report.run(
        Dataset.from_pandas(cur[columns], data_definition=definition),
        Dataset.from_pandas(ref[columns], data_definition=definition),
    )
    return DriftResult(_summarise(snapshot.dict(), rows, reference, cur, cfg), snapshot)


def run_drift_check(
    store: PredictionLog,
    reference: dict[str, Any],
    version: str,
    cfg: MonitorConfig,
    *,
    last: int | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    out_dir: Path | None = None,
    record: bool = True,
) -> DriftResult:
    """One drift check: model ``version``'s logged predictions in the window (the last ``last``, default
    ``monitor.window``, or [since, until)) against its ``reference``. The HTML report and the JSON summary are
    written to ``out_dir`` (default ``monitor.report_dir``).

    With ``record`` (the scheduled check), the verdict, or the reason there is none, goes into the prediction log,
    where the service reads it (``GET /v1/drift``, its gauges), and drift is logged as a warning and POSTed to
    ``monitor.alert_webhook``. Raises ``NotEnoughDataError`` when the window holds fewer than ``monitor.min_window``
    of the model's predictions.
    """
    window = last if last is not None else (None if since or until else cfg.window)
    rows = store.window(last=window, since=since, until=until)
    try:
        result = check_drift(rows, reference, cfg, model_version=version)
    except NotEnoughDataError as exc:
        if record:
            store.save_verdict(version, error=str(exc))
        raise
    folder = out_dir or cfg.report_dir
    html = result.save_html(folder / "drift_report.html")
    (folder / "drift_summary.json").write_text(json.dumps(result.summary, indent=2) + "\n")
    if record:
        store.save_verdict(version, summary=result.summary, report_html=html.read_bytes())
        if result.detected:
            s = result.summary
            fields = {"drift_share": s["drift_share"], "drifted_columns": s["drifted_columns"], "window": len(rows)}
            log.warning("drift detected", extra={"fields": fields | {"model_version": version}})
            if cfg.alert_webhook:
                post_alert(cfg.alert_webhook, {"event": "plantdx.drift_detected", **s})
    return result


def post_alert(url: str, payload: dict[str, Any], timeout: float = 5.0) -> bool:
    """POST the JSON payload; a failing hook is logged, never raised (the check itself succeeded)."""
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (an operator-set URL)
            return bool(200 <= response.status < 300)
    except Exception as exc:
        log.warning("drift alert hook failed: %s", type(exc).__name__)
        return False


def _summarise(
    report: dict[str, Any],
    rows: Sequence[dict[str, Any]],
    reference: dict[str, Any],
    current: pd.DataFrame,
    cfg: MonitorConfig,
) -> dict[str, Any]:
    metric_column: dict[str, str] = {}
    scores: dict[str, dict[str, Any]] = {}
    share = 0.0
    for metric in report["metrics"]:
        kind = metric["config"]["type"]
        if kind.endswith(":ValueDrift"):
            column = metric["config"]["column"]
            metric_column[metric["id"]] = column
            scores[column] = {"p_value": float(metric["value"]), "method": metric["config"].get("method")}
        elif kind.endswith(":DriftedColumnsCount"):
            share = float(metric["value"]["share"])
    dataset_test_failed = False
    for test in report["tests"]:
        metric_id = test["metric_config"]["metric_id"]
        if metric_id in metric_column:
            scores[metric_column[metric_id]]["drifted"] = test["status"] == "FAIL"
        elif test["metric_config"]["params"]["type"].endswith(":DriftedColumnsCount"):
            dataset_test_failed = test["status"] == "FAIL"
    drifted = sorted(c for c, s in scores.items() if s.get("drifted"))
    times = [r["created_at"] for r in rows if r.get("created_at") is not None]
    confidence = current[CONFIDENCE].to_numpy(dtype=float)
    ref_conf = np.asarray([row[reference["columns"].index(CONFIDENCE)] for row in reference["rows"]], dtype=float)
    abstained = [bool(r.get("abstained")) for r in rows]
    labelled = [(r["predicted"], r["label"]) for r in rows if r.get("label")]
    return {
        "drift_detected": dataset_test_failed,
        "drift_share": share,
        "drifted_columns": drifted,
        "columns": scores,
        "prediction_drift": bool(scores.get(PREDICTED, {}).get("drifted")),
        "confidence_drift": bool(scores.get(CONFIDENCE, {}).get("drifted")),
        "window": {
            "size": len(rows),
            "from": _iso(min(times)) if times else None,
            "to": _iso(max(times)) if times else None,
            "model_versions": sorted({str(r.get("model_version")) for r in rows}),
        },
        "mean_confidence": float(np.nanmean(confidence)) if len(confidence) else None,
        "reference_mean_confidence": float(ref_conf.mean()),
        "abstain_rate": float(np.mean(abstained)) if abstained else None,
        "labelled": len(labelled),
        "accuracy": (sum(p == t for p, t in labelled) / len(labelled)) if labelled else None,
        "thresholds": {"column_p_value": cfg.column_threshold, "drift_share": cfg.drift_share},
        "methods": {"numeric": NUM_METHOD, "categorical": CAT_METHOD},
        "reference": {"images": reference.get("images"), "source": reference.get("source")},
        "checked_at": _iso(datetime.now(UTC)),
    }


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="seconds")
