"""The prediction log: one row per served prediction, the labels that feedback attaches, and the image bytes
kept so labelled photos can be trained on. The service and its job workers write it; ``plantdx monitor`` and
``plantdx retrain`` read it.

SQLAlchemy Core over any URL: ``sqlite:///predictions.db`` on one machine, ``postgresql+psycopg://...`` when
several replicas share it. The service never writes on the request path: ``LogWriter`` queues records and a
thread inserts them in batches.
"""

from __future__ import annotations

import gzip
import json
import logging
import queue
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa
from PIL import Image

from plantdx.config import MonitorConfig
from plantdx.inference import Diagnosis, Predictor
from plantdx.profile import EMBEDDING_COMPONENTS, IMAGE_FEATURES, features_from_input, project_embeddings

EVICT_TO = 0.9  # a full image store is evicted down to this share of its bound
log = logging.getLogger("plantdx.monitor")

EMBEDDING_COLUMNS = tuple(f"emb_{i}" for i in range(EMBEDDING_COMPONENTS))
FEATURE_COLUMNS = (*IMAGE_FEATURES, *EMBEDDING_COLUMNS)

metadata = sa.MetaData()
predictions = sa.Table(
    "predictions",
    metadata,
    sa.Column("request_id", sa.String(80), primary_key=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, index=True),
    sa.Column("model_version", sa.String(120), nullable=False),
    sa.Column("predicted", sa.String(200), nullable=False),
    sa.Column("confidence", sa.Float, nullable=False),
    sa.Column("abstained", sa.Boolean, nullable=False),
    *(sa.Column(name, sa.Float, nullable=True) for name in FEATURE_COLUMNS),
    sa.Column("label", sa.String(200), nullable=True),
    sa.Column("labelled_at", sa.DateTime(timezone=True), nullable=True, index=True),
)
images = sa.Table(
    "prediction_images",
    metadata,
    sa.Column("request_id", sa.String(80), primary_key=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, index=True),
    sa.Column("content_type", sa.String(100), nullable=True),
    sa.Column("size", sa.Integer, nullable=False),
    sa.Column("labelled", sa.Boolean, nullable=False, default=False, index=True),
    sa.Column("data", sa.LargeBinary, nullable=False),
)
# The verdicts of `plantdx monitor`'s drift checks, which run beside the service: the API serves the latest one of the
# model it serves (GET /v1/drift) and its report, and publishes it as gauges. The Evidently HTML is kept gzipped, for
# the newest checks only (it embeds its scripts: megabytes per report).
drift_checks = sa.Table(
    "drift_checks",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("checked_at", sa.DateTime(timezone=True), nullable=False, index=True),
    sa.Column("model_version", sa.String(120), nullable=False, index=True),
    sa.Column("detected", sa.Boolean, nullable=True),  # None: no verdict (too few predictions in the window)
    sa.Column("summary", sa.Text, nullable=True),  # JSON
    sa.Column("error", sa.Text, nullable=True),  # why there is no verdict
    sa.Column("report", sa.LargeBinary, nullable=True),  # gzipped HTML
)
REPORTS_KEPT = 20


@dataclass(frozen=True)
class DriftVerdict:
    """One drift check of one model version: a summary (``plantdx.monitor.drift``), or the reason there is none."""

    checked_at: datetime
    model_version: str
    summary: dict[str, Any] | None
    error: str | None
    has_report: bool

    @property
    def detected(self) -> bool:
        return bool(self.summary and self.summary.get("drift_detected"))


@dataclass
class LogRecord:
    request_id: str
    model_version: str
    predicted: str
    confidence: float
    abstained: bool
    features: dict[str, float] = field(default_factory=dict)
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    image: bytes | None = None
    content_type: str | None = None
    prepare: Callable[[], dict[str, Any]] | None = field(default=None, repr=False)  # run by the writer thread
    held_bytes: int = 0  # what the record keeps alive until written (its model input, its photo): the queue's bound

    def row(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "created_at": self.created_at,
            "model_version": self.model_version,
            "predicted": self.predicted,
            "confidence": float(self.confidence),
            "abstained": bool(self.abstained),
            **{name: self.features.get(name) for name in FEATURE_COLUMNS},
        }


@dataclass(frozen=True)
class LabelResult:
    request_id: str
    label: str
    predicted: str
    previous: str | None  # the label this one replaced, if the request had one
    image_kept: bool


@dataclass(frozen=True)
class LabelledImage:
    request_id: str
    label: str
    content_type: str | None
    data: bytes


def score_images(predictor: Predictor, images: Sequence[Image.Image | Path | bytes]) -> list[dict[str, Any]]:
    """Log-shaped rows (features, projected embedding, confidence, predicted, abstained) for images scored offline,
    made exactly as the service makes them."""
    x = np.stack([predictor.preprocess(im) for im in images])
    rows = []
    for i in range(0, len(x), 64):
        chunk = x[i : i + 64]
        answers = predictor.answer(predictor.forward(chunk), chunk, top_k=1)
        rows += [monitor_row(d, xi, predictor) for d, xi in zip(answers, chunk, strict=True)]
    return rows


def monitor_row(diagnosis: Diagnosis, x: np.ndarray, predictor: Predictor) -> dict[str, Any]:
    """The monitored columns of one answer: image features of its model input, projected embedding, outcome."""
    row: dict[str, Any] = features_from_input(x, predictor.spec)
    projection = predictor.bundle.reference.get("embedding")
    if diagnosis.embedding is not None and projection:
        projected = project_embeddings(diagnosis.embedding[None], projection)[0]
        row.update({f"emb_{j}": float(v) for j, v in enumerate(projected)})
    row.update(confidence=diagnosis.confidence, predicted=diagnosis.label, abstained=diagnosis.abstained)
    return row


class Recording:
    """The prediction log's step of a diagnosis (a ``plantdx.serve.diagnosis.Recorder``): sample, build the record
    and queue it for the writer thread. O(1) and no I/O on the request path: the record's features are computed
    later, by the writer's thread (``prepare``)."""

    def __init__(self, cfg: MonitorConfig, writer: LogWriter) -> None:
        self.cfg = cfg
        self.writer = writer
        self._random = random.Random()

    def __call__(
        self,
        request_id: str,
        model_version: str,
        diagnosis: Diagnosis,
        x: np.ndarray,
        predictor: Predictor,
        data: bytes,
        content_type: str | None,
    ) -> None:
        cfg, rng = self.cfg, self._random
        if cfg.sample_rate < 1 and rng.random() >= cfg.sample_rate:
            return
        keep_image = cfg.image_store_mb > 0 and (cfg.image_sample_rate >= 1 or rng.random() < cfg.image_sample_rate)
        record = LogRecord(
            request_id=request_id,
            model_version=model_version,
            predicted=diagnosis.label,
            confidence=diagnosis.confidence,
            abstained=diagnosis.abstained,
            image=data if keep_image else None,
            content_type=content_type,
            prepare=lambda: monitor_row(diagnosis, x, predictor),
            held_bytes=x.nbytes + (len(data) if keep_image else 0),
        )
        self.writer.submit(record)


def _as_utc(value: datetime) -> datetime:
    """A bound given with any offset, or none (read as UTC), as UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _utc(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; everything here is UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


class PredictionLog:
    """The tables and the queries the service, ``plantdx monitor`` and ``plantdx retrain`` need."""

    def __init__(self, url: str, *, image_store_bytes: int = 256 * 2**20) -> None:
        self.url = url
        if url.startswith("sqlite:///") and not url.startswith("sqlite:///:memory:"):
            Path(url.removeprefix("sqlite:///")).expanduser().parent.mkdir(parents=True, exist_ok=True)
        kwargs: dict[str, Any] = {"pool_pre_ping": True}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        self.engine = sa.create_engine(url, **kwargs)
        if url.startswith("sqlite"):
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        metadata.create_all(self.engine)
        self.image_store_bytes = image_store_bytes
        self._image_total: int | None = None  # stored image bytes as last counted, plus what this process added

    def close(self) -> None:
        self.engine.dispose()

    # -- writing ---------------------------------------------------------------------------------------------------

    def write(self, records: Sequence[LogRecord]) -> int:
        """Insert the records; returns how many were written."""
        if not records:
            return 0
        try:
            self._insert(records)
        except sa.exc.IntegrityError:
            # A record the database refuses (above all a request id already logged: a job redelivered to a worker
            # runs again under its id) must not cost the others their rows: one at a time, and the first write wins.
            written = []
            for record in records:
                try:
                    self._insert([record])
                    written.append(record)
                except sa.exc.IntegrityError as exc:
                    reason = str(exc.orig).splitlines()[0] if exc.orig else type(exc).__name__
                    log.warning(f"prediction log: record {record.request_id} refused ({reason})")
            records = written
        added = sum(len(r.image) for r in records if r.image is not None)
        if added:
            if self._image_total is None:
                self._image_total = self.image_bytes()
            else:
                self._image_total += added
            if self._image_total > self.image_store_bytes:  # a full scan only when the bound may be crossed
                self.evict_images()
        return len(records)

    def _insert(self, records: Sequence[LogRecord]) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.insert(predictions), [r.row() for r in records])
            kept = [r for r in records if r.image is not None]
            if kept:
                conn.execute(
                    sa.insert(images),
                    [
                        {
                            "request_id": r.request_id,
                            "created_at": r.created_at,
                            "content_type": (r.content_type or "")[:100] or None,  # the column's width
                            "size": len(r.image or b""),
                            "labelled": False,
                            "data": r.image,
                        }
                        for r in kept
                    ],
                )

    def evict_images(self) -> int:
        """Keep the stored image bytes under the bound: unlabelled photos go first (oldest first), then labelled.

        Once over the bound, down to ``EVICT_TO`` of it: a store kept at its bound would scan and delete on every
        write (at 100 photos/s that took the service from 20 ms to 1.5 s per answer within five minutes).
        """
        removed = 0
        target = int(self.image_store_bytes * EVICT_TO)
        with self.engine.begin() as conn:
            total = int(conn.execute(sa.select(sa.func.coalesce(sa.func.sum(images.c.size), 0))).scalar_one())
            if total > self.image_store_bytes:
                order = (images.c.labelled.asc(), images.c.created_at.asc())
                for request_id, size in conn.execute(sa.select(images.c.request_id, images.c.size).order_by(*order)):
                    if total <= target:
                        break
                    conn.execute(sa.delete(images).where(images.c.request_id == request_id))
                    total -= int(size)
                    removed += 1
        self._image_total = total  # counted afresh: other replicas may write to the same store
        return removed

    def attach_label(self, request_id: str, label: str) -> LabelResult | None:
        """Record the true class of a logged prediction; None when the request id was never logged."""
        with self.engine.begin() as conn:
            row = conn.execute(
                sa.select(predictions.c.predicted, predictions.c.label).where(predictions.c.request_id == request_id)
            ).first()
            if row is None:
                return None
            conn.execute(
                sa.update(predictions)
                .where(predictions.c.request_id == request_id)
                .values(label=label, labelled_at=datetime.now(UTC))
            )
            kept = conn.execute(
                sa.update(images).where(images.c.request_id == request_id).values(labelled=True)
            ).rowcount
        return LabelResult(request_id, label, str(row.predicted), row.label, bool(kept))

    # -- reading ---------------------------------------------------------------------------------------------------

    def count(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(predictions)).scalar_one())

    def window(
        self, *, last: int | None = None, since: datetime | None = None, until: datetime | None = None
    ) -> list[dict[str, Any]]:
        """Logged predictions, newest ``last`` of them and/or those in [since, until), oldest first."""
        query = sa.select(predictions)
        # SQLite keeps UTC wall-clock text and would compare a "+02:00" bound as if it were UTC: convert first.
        if since is not None:
            query = query.where(predictions.c.created_at >= _as_utc(since))
        if until is not None:
            query = query.where(predictions.c.created_at < _as_utc(until))
        query = query.order_by(predictions.c.created_at.desc(), predictions.c.request_id.desc())
        if last is not None:
            query = query.limit(last)
        with self.engine.connect() as conn:
            rows = [dict(r._mapping) for r in conn.execute(query)]
        for r in rows:
            r["created_at"] = _utc(r["created_at"])
            r["labelled_at"] = _utc(r["labelled_at"])
        return rows[::-1]

    def live_accuracy(self, last: int) -> tuple[float | None, int]:
        """Accuracy of the served predictions over the ``last`` most recently labelled ones, and how many."""
        recent = (
            sa.select(predictions.c.predicted, predictions.c.label)
            .where(predictions.c.label.is_not(None))
            .order_by(predictions.c.labelled_at.desc())
            .limit(last)
            .subquery()
        )
        query = sa.select(
            sa.func.count(),
            sa.func.coalesce(sa.func.sum(sa.case((recent.c.predicted == recent.c.label, 1), else_=0)), 0),
        )
        with self.engine.connect() as conn:
            n, correct = conn.execute(query).one()
        return (int(correct) / int(n) if n else None), int(n)

    def labelled_images(self) -> Iterator[LabelledImage]:
        """Every kept photo that has a true label: what ``plantdx retrain`` adds to the training split."""
        query = (
            sa.select(images.c.request_id, predictions.c.label, images.c.content_type, images.c.data)
            .join(predictions, predictions.c.request_id == images.c.request_id)
            .where(predictions.c.label.is_not(None))
            .order_by(images.c.created_at)
        )
        with self.engine.connect() as conn:
            for row in conn.execute(query):
                yield LabelledImage(str(row.request_id), str(row.label), row.content_type, bytes(row.data))

    # -- drift verdicts ---------------------------------------------------------------------------------------------

    def save_verdict(
        self,
        model_version: str,
        *,
        summary: dict[str, Any] | None = None,
        error: str | None = None,
        report_html: bytes | None = None,
    ) -> DriftVerdict:
        """Record a drift check's outcome; only the newest ``REPORTS_KEPT`` checks keep their HTML report."""
        now = datetime.now(UTC)
        with self.engine.begin() as conn:
            conn.execute(
                sa.insert(drift_checks).values(
                    checked_at=now,
                    model_version=model_version,
                    detected=bool(summary["drift_detected"]) if summary is not None else None,
                    summary=json.dumps(summary) if summary is not None else None,
                    error=error,
                    report=gzip.compress(report_html) if report_html is not None else None,
                )
            )
            keep = sa.select(drift_checks.c.id).order_by(drift_checks.c.id.desc()).limit(REPORTS_KEPT)
            conn.execute(
                sa.update(drift_checks)
                .where(drift_checks.c.report.is_not(None), drift_checks.c.id.not_in(keep.scalar_subquery()))
                .values(report=None)
            )
        return DriftVerdict(now, model_version, summary, error, report_html is not None)

    def latest_verdict(self, model_version: str) -> DriftVerdict | None:
        """The newest drift check of ``model_version``, or None when it has never been checked."""
        query = (
            sa.select(
                drift_checks.c.checked_at,
                drift_checks.c.summary,
                drift_checks.c.error,
                drift_checks.c.report.is_not(None).label("has_report"),
            )
            .where(drift_checks.c.model_version == model_version)
            .order_by(drift_checks.c.id.desc())
            .limit(1)
        )
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        if row is None:
            return None
        summary = json.loads(row.summary) if row.summary is not None else None
        checked_at = _utc(row.checked_at)
        assert checked_at is not None
        return DriftVerdict(checked_at, model_version, summary, row.error, bool(row.has_report))

    def verdict_report(self, model_version: str) -> bytes | None:
        """The HTML report of ``model_version``'s newest drift check, if it has one."""
        query = (
            sa.select(drift_checks.c.report)
            .where(drift_checks.c.model_version == model_version)
            .order_by(drift_checks.c.id.desc())
            .limit(1)
        )
        with self.engine.connect() as conn:
            data = conn.execute(query).scalar_one_or_none()
        return gzip.decompress(data) if data is not None else None

    def image_bytes(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.coalesce(sa.func.sum(images.c.size), 0))).scalar_one())


def _sqlite_pragmas(dbapi_conn: Any, _: Any) -> None:
    """WAL lets ``plantdx monitor`` read while the service writes."""
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


class LogWriter:
    """Takes records on the request path in O(1) and writes them from one thread, a batch per transaction.

    A full queue drops the record (counted by ``on_drop``) rather than slow the response down; a failing database
    is logged and retried with the next batch, never raised into a request.
    """

    def __init__(
        self,
        store: PredictionLog,
        *,
        max_queued: int = 10_000,
        max_bytes: int = 256 * 2**20,
        batch_size: int = 256,
        linger_s: float = 0.05,
        on_drop: Callable[[], None] | None = None,
        on_depth: Callable[[int], None] | None = None,
    ) -> None:
        self.store = store
        self.queue: queue.Queue[LogRecord | None] = queue.Queue(maxsize=max_queued)
        self.batch_size = batch_size
        self.linger_s = linger_s
        self.on_drop = on_drop
        self.on_depth = on_depth
        self.max_bytes = max_bytes
        self.written = 0
        self.failed = 0
        self._accepted = 0  # records taken into the queue so far
        self._processed = 0  # of those, written (or lost to a failing database), in queue order
        self._held = 0  # bytes of the queued records
        self._done = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="plantdx-predlog", daemon=True)
        self._thread.start()

    def submit(self, record: LogRecord) -> bool:
        with self._done:
            fits = self._held + record.held_bytes <= self.max_bytes
            if fits:
                self._held += record.held_bytes
        if fits:
            try:
                self.queue.put_nowait(record)
                with self._done:
                    self._accepted += 1
                return True
            except queue.Full:
                with self._done:
                    self._held -= record.held_bytes
        if self.on_drop is not None:
            self.on_drop()
        return False

    def _run(self) -> None:
        while True:
            first = self.queue.get()
            if first is None:
                return
            time.sleep(self.linger_s)  # let a few records gather: one transaction for many, less CPU per record
            batch = [first]
            stop = False
            while len(batch) < self.batch_size:
                try:
                    item = self.queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
            self._write(batch)
            with self._done:
                self._processed += len(batch)
                self._held -= sum(r.held_bytes for r in batch)
                self._done.notify_all()
            if self.on_depth is not None:
                self.on_depth(self.queue.qsize())
            if stop:
                return

    def _write(self, batch: list[LogRecord]) -> None:
        for record in batch:
            if record.prepare is not None:
                try:
                    record.features = {k: v for k, v in record.prepare().items() if k in FEATURE_COLUMNS}
                except Exception as exc:
                    log.warning("prediction features failed: %s", type(exc).__name__)
                record.prepare = None
        try:
            self.written += self.store.write(batch)
        except Exception as exc:  # the log must never take the service down
            self.failed += len(batch)
            log.warning("prediction log write failed (%d records lost): %s", len(batch), type(exc).__name__)

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything queued before this call is written (feedback may arrive right after its
        prediction). Records queued meanwhile are not waited for, so under steady traffic this still returns."""
        with self._done:
            target = self._accepted
            return self._done.wait_for(lambda: self._processed >= target, timeout)

    def close(self, timeout: float = 10.0) -> None:
        self.flush(timeout)
        try:
            self.queue.put(None, timeout=1)
        except queue.Full:
            pass
        self._thread.join(timeout)
