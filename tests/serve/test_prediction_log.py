"""The prediction log on SQLite and on a real PostgreSQL server: rows, windows, labels, live accuracy, images."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa

from conftest import free_port
from plantdx.serve.prediction_log import FEATURE_COLUMNS, LogRecord, LogWriter, PredictionLog

PG_BIN = Path("/usr/lib/postgresql")


def _record(i: int, predicted: str = "A", image: bytes | None = None, at: datetime | None = None) -> LogRecord:
    return LogRecord(
        request_id=f"r{i}",
        model_version="v1",
        predicted=predicted,
        confidence=0.5 + i / 1000,
        abstained=False,
        features={name: float(i) for name in FEATURE_COLUMNS},
        created_at=at or datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=i),
        image=image,
        content_type="image/jpeg" if image else None,
    )


def _pg_bindir() -> Path:
    found = sorted(PG_BIN.glob("*/bin/initdb"))
    if not found:
        pytest.fail("PostgreSQL server binaries not found: apt-get install postgresql (the CI script does)")
    return found[-1].parent


def _run(cmd: list[str | Path], log: Path | None = None) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        server_log = log.read_text()[-2000:] if log is not None and log.exists() else ""
        command = " ".join(map(str, cmd))
        pytest.fail(f"{command} exited {proc.returncode}: {proc.stdout[-2000:]}{proc.stderr[-2000:]}{server_log}")


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """A throwaway PostgreSQL cluster on a free loopback port (initdb + pg_ctl), as an unprivileged user if root."""
    bindir = _pg_bindir()
    base = Path(tempfile.mkdtemp(prefix="plantdx-pg-"))  # pytest's tmp dirs are private to root
    data = base / "data"
    port = free_port()
    as_user: list[str] = []
    if os.geteuid() == 0:  # postgres refuses to run as root
        shutil.chown(data.parent, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    _run([*as_user, bindir / "initdb", "-D", data, "-A", "trust", "-U", "plantdx"])
    log = data.parent / "pg.log"
    _run([*as_user, bindir / "pg_ctl", "-D", data, "-l", log, "-w", "-o",
          f"-p {port} -k {data.parent} -c listen_addresses=127.0.0.1", "start"], log=log)  # fmt: skip
    try:
        yield f"postgresql+psycopg://plantdx@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, bindir / "pg_ctl", "-D", data, "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[PredictionLog]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/log.db"
    else:
        url = request.getfixturevalue("postgres_url")
    log = PredictionLog(url, image_store_bytes=1000)
    with log.engine.begin() as conn:  # the PostgreSQL cluster is shared by the module's tests
        conn.execute(sa.text("DELETE FROM prediction_images"))
        conn.execute(sa.text("DELETE FROM predictions"))
    yield log
    log.close()


def test_rows_round_trip_and_windows(store: PredictionLog) -> None:
    store.write([_record(i) for i in range(10)])
    assert store.count() == 10
    last = store.window(last=3)
    assert [r["request_id"] for r in last] == ["r7", "r8", "r9"]  # newest three, oldest first
    assert last[0]["mean_r"] == 7.0 and last[0]["emb_7"] == 7.0 and last[0]["created_at"].tzinfo is not None
    start = datetime(2026, 1, 1, tzinfo=UTC)
    ranged = store.window(since=start + timedelta(seconds=2), until=start + timedelta(seconds=5))
    assert [r["request_id"] for r in ranged] == ["r2", "r3", "r4"]
    # The same instants written in another offset select the same rows (SQLite compares text).
    plus_two = timezone(timedelta(hours=2))
    shifted = store.window(
        since=(start + timedelta(seconds=2)).astimezone(plus_two),
        until=start.astimezone(plus_two) + timedelta(seconds=5),
    )
    assert [r["request_id"] for r in shifted] == ["r2", "r3", "r4"]
    assert [r["request_id"] for r in store.window(since=datetime(2026, 1, 1, 0, 0, 8))] == ["r8", "r9"]  # naive: UTC


def test_labels_replace_and_feed_live_accuracy(store: PredictionLog) -> None:
    store.write([_record(i, predicted="A" if i % 2 else "B") for i in range(4)])
    assert store.attach_label("nope", "A") is None
    first = store.attach_label("r1", "B")
    assert first is not None and first.previous is None and first.predicted == "A"
    again = store.attach_label("r1", "A")
    assert again is not None and again.previous == "B"  # the second label replaces the first, and says so
    store.attach_label("r2", "B")
    store.attach_label("r3", "C")
    accuracy, n = store.live_accuracy(last=10)
    assert n == 3 and accuracy == pytest.approx(2 / 3)
    assert store.live_accuracy(last=1)[1] == 1


def test_image_store_keeps_labelled_photos_within_the_bound(store: PredictionLog) -> None:
    store.write([_record(0, image=b"x" * 400), _record(1, image=b"y" * 400)])
    assert store.attach_label("r0", "A") is not None
    store.write([_record(2, image=b"z" * 400)])  # 1200 bytes > 1000: the oldest unlabelled photo (r1) goes
    assert store.image_bytes() == 800
    kept = list(store.labelled_images())
    assert [(k.request_id, k.label, k.data) for k in kept] == [("r0", "A", b"x" * 400)]
    assert store.attach_label("r1", "A") is not None and store.attach_label("r1", "A").image_kept is False  # type: ignore[union-attr]


def test_a_full_image_store_is_evicted_below_its_bound_not_on_every_write(store: PredictionLog) -> None:
    """Past the bound, photos go until 90 % of it is left, so the next writes fit without a scan and a delete each."""
    store.write([_record(i, image=b"p" * 100) for i in range(10)])  # 1000 bytes: at the bound
    store.write([_record(10, image=b"p" * 100)])  # 1100 > 1000: down to 900 (r0 and r1 go)
    assert store.image_bytes() == 900
    store.write([_record(11, image=b"p" * 100)])  # 1000: within the bound, nothing goes
    assert store.image_bytes() == 1000
    with store.engine.connect() as conn:
        kept = sorted(r[0] for r in conn.execute(sa.text("SELECT request_id FROM prediction_images")))
    assert kept == sorted(f"r{i}" for i in range(2, 12))


def test_writer_is_off_the_request_path_and_drops_rather_than_block(tmp_path: Path) -> None:
    store = PredictionLog(f"sqlite:///{tmp_path}/log.db")
    dropped: list[int] = []
    writer = LogWriter(store, max_queued=5, on_drop=lambda: dropped.append(1))
    started = time.perf_counter()
    accepted = sum(writer.submit(_record(i)) for i in range(2000))
    elapsed = time.perf_counter() - started
    assert writer.flush(10)
    assert accepted + len(dropped) == 2000 and dropped  # a full queue drops and counts, never waits
    assert store.count() == accepted == writer.written
    assert elapsed < 2.0  # 2000 submits never waited on the database (each is a queue put)
    writer.close()


def test_the_writer_bounds_the_memory_its_queue_holds(tmp_path: Path) -> None:
    """A stalled database: records pile up, each holding its model input and photo; past the byte bound they drop."""
    store = PredictionLog(f"sqlite:///{tmp_path}/log.db")
    dropped: list[int] = []
    writer = LogWriter(store, max_bytes=1000, on_drop=lambda: dropped.append(1))
    stall = threading.Event()
    original = store.write
    store.write = lambda records: (stall.wait(10), original(records))[1]  # type: ignore[method-assign]
    heavy = [_record(i) for i in range(6)]
    for r in heavy:
        r.held_bytes = 300
    accepted = [writer.submit(r) for r in heavy]
    assert accepted == [True, True, True, False, False, False] and len(dropped) == 3  # 3 x 300 <= 1000 < 4 x 300
    stall.set()
    assert writer.flush(10) and store.count() == 3
    assert writer.submit(_record(9)) is True  # written: the bytes are free again
    writer.close()


def test_a_failing_database_never_raises_into_the_caller(tmp_path: Path) -> None:
    store = PredictionLog(f"sqlite:///{tmp_path}/log.db")
    writer = LogWriter(store)
    with store.engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE predictions"))
    assert writer.submit(_record(1))
    assert writer.flush(5)
    assert writer.failed == 1 and writer.written == 0
    writer.close()


def test_a_repeated_request_id_costs_the_batch_nothing(store: PredictionLog) -> None:
    """A client retrying with its own X-Request-ID: the first row stays, the repeat is skipped, the rest are kept."""
    store.write([_record(i) for i in range(5)])
    repeat = _record(0, predicted="B")
    store.write([_record(5), repeat, _record(6, image=b"jpeg")])
    assert store.count() == 7
    rows = {r["request_id"]: r for r in store.window(last=10)}
    assert set(rows) == {f"r{i}" for i in range(7)} and rows["r0"]["predicted"] == "A"
    assert store.image_bytes() == len(b"jpeg")  # the kept record's photo too


def test_flush_waits_for_what_came_before_it_not_for_traffic_after(tmp_path: Path) -> None:
    """Feedback flushes to find its prediction; under steady traffic the queue is never empty, yet it must return."""
    store = PredictionLog(f"sqlite:///{tmp_path}/log.db")
    original = store.write
    store.write = lambda records: (time.sleep(0.02), original(records))[1]  # type: ignore[method-assign]
    writer = LogWriter(store, linger_s=0.01)  # each write takes 20 ms: records keep arriving meanwhile
    writer.submit(_record(0))
    stop = threading.Event()

    def traffic() -> None:
        i = 1
        while not stop.is_set():
            writer.submit(_record(i))
            i += 1
            time.sleep(0.001)

    feeder = threading.Thread(target=traffic)
    feeder.start()
    try:
        time.sleep(0.05)
        started = time.perf_counter()
        assert writer.flush(timeout=5.0)  # returns once r0 (and what preceded the call) is written
        assert time.perf_counter() - started < 2.0
        assert store.attach_label("r0", "A") is not None
    finally:
        stop.set()
        feeder.join()
        writer.close()
