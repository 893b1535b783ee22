"""Close the loop: the original data plus the photos growers labelled through ``/v1/feedback`` -> a challenger,
registered and promoted only through the gate.

The feedback photos join the training split only; the test split stays exactly the champion's, so the gate compares
the two models on the same images (the registry checks the test-split hash).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from PIL import Image

from plantdx.config import Settings
from plantdx.data.split import Manifest, ManifestRow, manifest_for, write_manifest
from plantdx.digest import sha256_file
from plantdx.errors import PlantdxError
from plantdx.serve.prediction_log import PredictionLog

_EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp"}


class RetrainError(PlantdxError):
    """Nothing to retrain on, or no prediction log to read feedback from."""


@dataclass
class RetrainResult:
    run_dir: Path
    feedback_images: int
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count
    run_id: str | None = None
    version: str | None = None
    accepted: bool = False
    reasons: list[str] = field(default_factory=list)
    checks: dict[str, object] = field(default_factory=dict)
    champion_before: str | None = None
    champion_after: str | None = None


def feedback_rows(store: PredictionLog, base: Manifest, folder: Path) -> tuple[list[ManifestRow], dict[str, int]]:
    """Write the labelled photos into ``folder/<label>/`` and return them as training rows.

    A photo already in the dataset is skipped (by hash): one that is a test image must never reach training.
    """
    known = {r.sha256 for r in base.rows}
    classes = set(base.classes)
    rows: list[ManifestRow] = []
    skipped: dict[str, int] = {}
    seen: set[str] = set()
    for item in store.labelled_images():
        reason = None
        try:
            with Image.open(io.BytesIO(item.data)) as im:
                ext = _EXTENSIONS.get(im.format or "")
        except Exception:
            ext = None
        if item.label not in classes:
            reason = "label not in the dataset's classes"
        elif ext is None:
            reason = "not a JPEG, PNG or WebP"
        if reason is not None:
            skipped[reason] = skipped.get(reason, 0) + 1
            continue
        path = folder / item.label / f"{item.request_id}{ext}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(item.data)
        digest = sha256_file(path)
        if digest in known or digest in seen:
            path.unlink()
            skipped["already in the dataset"] = skipped.get("already in the dataset", 0) + 1
            continue
        seen.add(digest)
        # Growers' photos, taken as growers take them: the field domain, kept as files by absolute path.
        rows.append(
            ManifestRow(
                str(path.resolve()), item.label, "train", digest, f"feedback:{digest[:16]}", "feedback", "field"
            )
        )
    return rows, skipped


def retrain(settings: Settings, *, min_feedback: int = 1) -> RetrainResult:
    """Build the training set, train and export a challenger, register it, and promote it if the gate accepts."""
    from plantdx.export import export
    from plantdx.registry import CHAMPION, Registry
    from plantdx.tracking import git_commit
    from plantdx.train import train

    if settings.monitor.log_url is None:
        raise RetrainError("monitor.log_url is not set: there is no prediction log to read feedback from")
    if settings.dataset.train_on_val:  # refused now, not after a whole training run, when export would refuse it
        raise RetrainError(
            "dataset.train_on_val is set: a refit cannot be calibrated or gated on validation images it has seen"
        )
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    run_dir = (settings.train.output_dir / f"retrain-{stamp}").resolve()
    base = manifest_for(settings.dataset)
    store = PredictionLog(settings.monitor.log_url)
    try:
        rows, skipped = feedback_rows(store, base, run_dir / "feedback")
    finally:
        store.close()
    result = RetrainResult(run_dir=run_dir, feedback_images=len(rows), skipped=skipped)
    if len(rows) < min_feedback:
        raise RetrainError(
            f"{len(rows)} usable labelled feedback photos (skipped: {skipped or 'none'}); need at least {min_feedback}"
        )
    manifest_path = write_manifest(Manifest(base.rows + tuple(rows)), run_dir / "manifest.csv")
    tuned = settings.model_copy(
        update={"dataset": settings.dataset.model_copy(update={"manifest": manifest_path})}, deep=True
    )
    trained = train(tuned)
    result.run_id = trained.run_id
    bundle = export(tuned, run_dir / "bundle", run_id=trained.run_id, extra_card={"retrained_with_feedback": len(rows)})
    registry = Registry(settings.tracking, settings.gate)
    before = registry.by_alias(CHAMPION)
    result.champion_before = before.version if before else None
    info = registry.register(bundle.bundle, run_id=trained.run_id, git_commit=git_commit())
    result.version = info.version
    gate = registry.gate(info)
    result.accepted, result.reasons, result.checks = gate.accepted, gate.reasons, gate.checks
    if gate.accepted:
        registry.promote(info.version)
    after = registry.by_alias(CHAMPION)
    result.champion_after = after.version if after else None
    return result
