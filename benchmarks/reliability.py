"""Reliability drills over HTTP with locust (headless, as a library): capacity, soak, overload and recovery.

    .venv/bin/python benchmarks/reliability.py [--short] [--soak-s 300] [--bundle DIR] [--json PATH]

1. capacity: a closed loop of 32 users without think time (what `benchmarks/serve.py` measured with wrk);
2. soak: 80 % of that rate, paced, for ``--soak-s`` seconds (5 minutes; ``--short``: 25 s);
3. overload: 3x capacity offered by 512 users; a separate probe process sends a request every 50 ms, each on a
   new connection, through it and for 10 s after the load stops: how fast a refused client hears so, and how
   soon answers are normal again;
4. after: 80 % again, to show the service is as fast as before.

A real ``plantdx serve`` process (the bundled model unless ``--bundle``, monitoring on into a temporary SQLite
log, rate limit lifted) on 127.0.0.1; its resident memory, open file descriptors and CPU are read from /proc
every few seconds. Loads go only to loopback and are bounded in time. Prints a table, checks the targets of the
reliability issue (docs/reliability.md), writes ``benchmarks/results/reliability.json`` (``--short``:
``reliability-short.json``) and exits 1 when a target is missed (``--no-fail``: 0). The load generator shares
the machine's cores with the server: its own latencies include its waits for a CPU, which is why the verdicts
on latency come from the probe process and the server's access log.
"""

from __future__ import annotations

# locust patches the standard library for gevent on import: it must come before anything that opens sockets.
from locust import FastHttpUser, task  # isort: skip

import argparse
import gc
import io
import itertools
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import gevent
from locust.env import Environment

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
BOUNDARY = "----plantdxreliability"
HEADERS = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
TARGETS = {
    "soak_load": 0.8,  # of the measured capacity
    "overload": 3.0,
    # The p99 budget of /v1/predict: PlantdxHighLatencyP99 in deploy/prometheus/rules/plantdx.rules.yml.
    "p99_budget_ms": 1000.0,
    "rss_growth_max": 0.10,
    "shed_p99_max_ms": 500.0,  # "fast": a quarter of serve.request_timeout_ms, when a queued request is shed
    "recovery_max_s": 5.0,
}
ALLOWED = {200, 429, 503}  # deliberate refusals: over a rate limit, shedding load


# --- the load ---------------------------------------------------------------------------------------------------


@dataclass
class Load:
    """What the users do now, shared by every user greenlet (one phase at a time)."""

    bodies: list[bytes] = field(default_factory=list)
    active: bool = False
    interval: float = 0.0  # seconds between one user's requests; 0: none (closed loop)
    phase: str = "idle"
    in_flight: int = 0
    records: list[tuple[str, float, float, int, str]] = field(default_factory=list)  # phase, sent, ms, status, error
    counter: itertools.count[int] = field(default_factory=itertools.count)


LOAD = Load()


class Grower(FastHttpUser):
    """One client uploading real leaf photos to ``POST /v1/predict``, paced by ``LOAD.interval``."""

    network_timeout = 15.0  # far beyond serve.request_timeout_ms: a hang shows up as a timeout, not a 503
    connection_timeout = 15.0
    _next = 0.0

    def wait_time(self) -> float:
        if not LOAD.active:
            return 0.05
        if LOAD.interval <= 0:
            return 0.0
        now = time.monotonic()
        self._next = max(self._next + LOAD.interval, now)
        return self._next - now

    def on_stop(self) -> None:
        self.client.client.close()  # the server's fd count must come back to its idle level

    @task
    def predict(self) -> None:
        if not LOAD.active:
            return
        body = LOAD.bodies[next(LOAD.counter) % len(LOAD.bodies)]
        LOAD.in_flight += 1
        try:
            self.client.post("/v1/predict", data=body, headers=HEADERS, name="predict")
        finally:
            LOAD.in_flight -= 1


def on_request(
    response_time: float, response: Any = None, exception: BaseException | None = None, start_time: float = 0, **_: Any
) -> None:
    status = int(getattr(response, "status_code", 0) or 0)
    error = type(exception).__name__ if exception is not None and not status else ""
    LOAD.records.append((LOAD.phase, start_time, float(response_time), status, error))


def multipart(data: bytes) -> bytes:
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="leaf.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode()
    return head + data + f"\r\n--{BOUNDARY}--\r\n".encode()


def leaf_photos(root: Path, per_class: int = 4) -> list[bytes]:
    """Real PlantVillage JPEGs, a few per class; synthetic ones (with a warning) when the data is absent."""
    photos = []
    if root.is_dir():
        for folder in sorted(p for p in root.iterdir() if p.is_dir()):
            photos += [p.read_bytes() for p in sorted(folder.glob("*.jpg"))[:per_class]]
    if photos:
        return photos
    print(f"warning: no images under {root}; sending synthetic JPEGs", file=sys.stderr)
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for _ in range(16):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)).save(buf, format="JPEG")
        out.append(buf.getvalue())
    return out


# --- the server and what it holds -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(bundle: Path | None, tmp: Path, extra: list[str]) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLANTDX_")}
    cmd = [sys.executable, "-m", "plantdx.cli", "serve", "--port", str(port),
           "--set", "serve.rate_limit=100000000/minute",
           "--set", f"monitor.log_url=sqlite:///{tmp / 'predictions.db'}",
           "--set", f"monitor.report_dir={tmp / 'reports'}", *extra]  # fmt: skip
    if bundle is not None:
        cmd += ["--model", str(bundle)]
    proc = subprocess.Popen(cmd, stdout=(tmp / "server.log").open("wb"), stderr=subprocess.STDOUT, env=env, cwd=tmp)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}: see {tmp / 'server.log'}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                if s.recv(64).startswith(b"HTTP/1.1 200"):
                    return proc, url
        except OSError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the server did not become ready in 90 s")


@dataclass
class Sample:
    t: float
    phase: str
    rss_mib: float
    fds: int
    server_cpu: float  # cores busy in the server over the last interval
    generator_cpu: float  # cores busy in this process (locust)
    load1: float


def read_proc(pid: int) -> tuple[float, int]:
    """Resident memory (MiB) and open file descriptors of ``pid``, from /proc."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss_kib = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
    return rss_kib / 1024, len(os.listdir(f"/proc/{pid}/fd"))


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def sampler(pid: int, samples: list[Sample], every: float, t0: float) -> None:
    last = (time.monotonic(), cpu_seconds(pid), cpu_seconds(os.getpid()))
    while True:
        gevent.sleep(every)
        now, server, own = time.monotonic(), cpu_seconds(pid), cpu_seconds(os.getpid())
        rss, fds = read_proc(pid)
        span = now - last[0]
        samples.append(
            Sample(
                round(now - t0, 1),
                LOAD.phase,
                round(rss, 1),
                fds,
                round((server - last[1]) / span, 2),
                round((own - last[2]) / span, 2),
                round(os.getloadavg()[0], 2),
            )
        )
        last = (now, server, own)


def tcp_sockets(pid: int) -> int:
    """How many of ``pid``'s descriptors are TCP sockets (its listener and connections), from /proc/net."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if os.path.exists(table):
            inodes |= {line.split()[9] for line in Path(table).read_text().splitlines()[1:]}
    links = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            links.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:  # closed while we looked
            pass
    return sum(link.startswith("socket:[") and link[8:-1] in inodes for link in links)


def idle_counts(pid: int) -> tuple[float, int, int]:
    """RSS, fds and TCP sockets once the users have gone and their connections are closed."""
    gc.collect()
    gevent.sleep(2.0)
    return (*read_proc(pid), tcp_sockets(pid))


def access_latencies(log: Path, t_from: str, t_to: str) -> dict[int, list[float]]:
    """Server-side latency of ``POST /v1/predict`` by status, from the JSON access log, between two times."""
    out: dict[int, list[float]] = {}
    for line in log.read_text().splitlines():
        if not line.startswith("{"):
            continue
        x = json.loads(line)
        if x.get("logger") == "plantdx.access" and x.get("route") == "/v1/predict" and t_from <= x["time"] <= t_to:
            out.setdefault(int(x["status"]), []).append(float(x["latency_ms"]))
    return out


# --- the probe: a separate process, so its latencies are not the load generator's own waits --------------------


def probe(port: int, seconds: float, body: bytes) -> None:
    """Send a request every 50 ms for ``seconds`` whatever the answers take (an open loop: a slow answer does not
    delay the next one), each on a new connection, as a client arriving in the middle of the overload would;
    print ``[wall time sent, status, ms]`` per request."""
    head = (
        f"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {HEADERS['Content-Type']}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    rows: list[list[float]] = []

    def one() -> None:
        sent, t = time.time(), time.monotonic()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=15) as conn:
                conn.sendall(head + body)
                status = int(conn.recv(64).split(b" ", 2)[1])
                while conn.recv(65536):  # the whole answer: the server closes after it
                    pass
        except (OSError, ValueError, IndexError):  # refused, reset, timed out or garbled: not a normal answer
            status = 0
        rows.append([sent, status, round((time.monotonic() - t) * 1000, 2)])

    greenlets = []
    start = time.monotonic()
    for i in itertools.count():
        if (due := start + i * 0.05) > start + seconds:
            break
        gevent.sleep(max(0.0, due - time.monotonic()))
        greenlets.append(gevent.spawn(one))
    gevent.joinall(greenlets, timeout=30)
    print(json.dumps(sorted(rows)))


def start_probe(url: str, seconds: float, data: Path) -> subprocess.Popen[bytes]:
    port = url.rsplit(":", 1)[1]
    cmd = [sys.executable, __file__, "--probe", port, "--probe-s", str(seconds), "--data", str(data)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE)


def recovery(rows: list[list[float]], stopped: float, normal_ms: float, run: int = 20) -> dict[str, Any]:
    """Seconds from the end of the load to the first probe that starts a second (``run`` probes) of normal answers
    (200s within ``normal_ms``). A later blip (a drift check holds the GIL for about a second) is counted, not
    taken for a slow recovery."""
    after = [r for r in rows if r[0] >= stopped]
    normal = [r[1] == 200 and r[2] <= normal_ms for r in after]
    first = next((i for i in range(len(after)) if all(normal[i : i + run])), None)
    return {
        "probes": len(after),
        "not_normal": normal.count(False),
        "not_normal_after_recovery": None if first is None else normal[first:].count(False),
        "statuses": sorted({int(r[1]) for r in after}),
        "normal_means": f"200 within {normal_ms:.0f} ms, {run} in a row",
        "recovered_after_s": None if first is None else _r(max(0.0, after[first][0] - stopped)),
    }


# --- phases -----------------------------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def latency(values: list[float], prefix: str = "") -> dict[str, float | None]:
    return {f"{prefix}p50_ms": _r(pct(values, 0.5)), f"{prefix}p99_ms": _r(pct(values, 0.99))}


def count(statuses: list[int]) -> dict[str, int]:
    out: dict[str, int] = {}
    for s in statuses:
        out[str(s)] = out.get(str(s), 0) + 1
    return out


def summarise(phase: str, since: float, until: float, offered_rps: float | None) -> dict[str, Any]:
    """The phase's requests sent between two wall times."""
    rows = [r for r in LOAD.records if r[0] == phase and since <= r[1] < until]
    seconds = until - since
    statuses: dict[str, int] = {}
    for _, _, _, status, error in rows:
        key = str(status) if status else f"error:{error}"
        statuses[key] = statuses.get(key, 0) + 1
    ok = [r[2] for r in rows if r[3] == 200]
    return {
        "phase": phase,
        "seconds": round(seconds, 1),
        "offered_rps": round(offered_rps, 1) if offered_rps else None,
        "sent_rps": round(len(rows) / seconds, 1),
        "ok_rps": round(len(ok) / seconds, 1),
        "statuses": statuses,
        "unexpected": sum(n for k, n in statuses.items() if not (k.isdigit() and int(k) in ALLOWED)),
        **latency(ok),
        "p90_ms": _r(pct(ok, 0.9)),
        "max_ms": _r(max(ok, default=None)),
        **latency([r[2] for r in rows if r[3] == 503], "shed_"),
        "load1": round(os.getloadavg()[0], 2),
    }


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 2)


@dataclass
class Window:
    started: float  # wall times
    steady: float  # every user has started
    stopped: float


def run_phase(runner: Any, phase: str, users: int, rps: float | None, seconds: float, ramp_s: float = 0.0) -> Window:
    """``users`` users (started over ``ramp_s``) for ``seconds``, paced to ``rps`` in all or as fast as answers come
    (``rps=None``); then waits for the requests under way and stops the users."""
    LOAD.phase, LOAD.interval = phase, (users / rps if rps else 0.0)
    LOAD.active = True
    started = time.time()
    runner.start(users, spawn_rate=users / ramp_s if ramp_s else min(users * 10, 100))
    gevent.sleep(seconds)
    LOAD.active = False
    stopped = time.time()
    deadline = time.monotonic() + 30  # let the requests under way be answered (or time out)
    while LOAD.in_flight and time.monotonic() < deadline:
        gevent.sleep(0.05)
    runner.stop()
    return Window(started, started + ramp_s, stopped)


# --- the drill --------------------------------------------------------------------------------------------------


def main() -> int:
    from plantdx.config import default_data_root

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--short", action="store_true", help="the quick version (about 90 s) that make test runs")
    parser.add_argument("--soak-s", type=float, help="soak length (default 300; --short: 25)")
    parser.add_argument("--bundle", type=Path, help="a model bundle (default: the bundled model)")
    parser.add_argument("--data", type=Path, default=default_data_root())
    parser.add_argument("--json", type=Path, help="where to write the results")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="a serve setting key=value")
    parser.add_argument("--overload-users", type=int, default=512)
    parser.add_argument("--no-fail", action="store_true", help="exit 0 even when a target is missed")
    parser.add_argument("--probe", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--probe-s", type=float, default=10.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    photos = leaf_photos(args.data)
    if args.probe:
        probe(args.probe, args.probe_s, multipart(photos[0]))
        return 0

    short = args.short
    soak_s = args.soak_s or (25.0 if short else 300.0)
    warm_s, cap_s, over_s, after_s = (4.0, 8.0, 10.0, 8.0) if short else (10.0, 20.0, 30.0, 20.0)
    recovery_s = 10.0
    out = args.json or RESULTS / ("reliability-short.json" if short else "reliability.json")
    LOAD.bodies = [multipart(p) for p in photos]
    tmp = Path(tempfile.mkdtemp(prefix="plantdx-reliability-"))
    # The full soak sees a drift check every minute (default: 5 minutes) to show that repeated checks do not grow.
    sets = args.sets if short else ["monitor.check_interval_s=60", *args.sets]
    proc, url = start_server(args.bundle, tmp, [x for s in sets for x in ("--set", s)])
    log = tmp / "server.log"
    t0 = time.monotonic()
    samples: list[Sample] = []
    env = Environment(user_classes=[Grower], host=url)
    env.events.request.add_listener(on_request)
    runner = env.create_local_runner()
    watcher = gevent.spawn(sampler, proc.pid, samples, 1.0 if short else 2.0, t0)
    phases: dict[str, dict[str, Any]] = {}
    try:
        idle_rss, idle_fds, _ = idle_counts(proc.pid)
        print(f"server pid {proc.pid} at {url}: {idle_rss:.0f} MiB resident, {idle_fds} fds", flush=True)
        window = run_phase(runner, "warm-up", 8, None, warm_s)
        phases["warm-up"] = summarise("warm-up", window.started, window.stopped, None)
        # The first drift check imports Evidently and pandas (~+260 MiB, measured): part of warming up, so it runs
        # now rather than in the middle of the soak.
        with urllib.request.urlopen(f"{url}/v1/drift?refresh=true", timeout=300) as answer:
            print(f"first drift check: {json.load(answer).get('status')}", flush=True)
        warm_rss, warm_fds, warm_tcp = idle_counts(proc.pid)  # the prediction log and drift checks are loaded
        window = run_phase(runner, "capacity", 32, None, cap_s)
        phases["capacity"] = summarise("capacity", window.started, window.stopped, None)
        capacity = phases["capacity"]["ok_rps"]
        print(f"capacity: {capacity:.0f} req/s (32 users, closed loop)", flush=True)

        soak_rps = TARGETS["soak_load"] * capacity
        window = run_phase(runner, "soak", 64, soak_rps, soak_s)
        phases["soak"] = soak = summarise("soak", window.started, window.stopped, soak_rps)
        print(f"soak: {soak['ok_rps']:.0f} req/s, p99 {soak['p99_ms']} ms, {soak['statuses']}", flush=True)

        # The users start over 2 s (512 connections opened at once are a different drill: a thundering herd);
        # the verdicts are on the steady state that follows.
        over_rps, ramp_s = TARGETS["overload"] * capacity, 2.0
        prober = start_probe(url, ramp_s + over_s + recovery_s, args.data)
        window = run_phase(runner, "overload", args.overload_users, over_rps, ramp_s + over_s, ramp_s=ramp_s)
        rows = json.loads(prober.communicate(timeout=recovery_s + 60)[0] or b"[]")
        steady = window.steady + 1.0
        during = [r for r in rows if steady <= r[0] < window.stopped]
        server_side = access_latencies(log, _local(steady), _local(window.stopped))
        normal_ms = max(soak["p99_ms"] or 0.0, 50.0)  # as fast as the service was at 80 % load
        phases["overload"] = over = summarise("overload", steady, window.stopped, over_rps)
        over.update(
            users=args.overload_users,
            ramp_up=summarise("overload", window.started, steady, over_rps),
            probe={
                "statuses": count([int(r[1]) for r in during]),
                **latency([r[2] for r in during if r[1] == 200], "ok_"),
                **latency([r[2] for r in during if r[1] == 503], "shed_"),
            },
            server_side={
                "statuses": {str(k): len(v) for k, v in server_side.items()},
                **latency(server_side.get(200, []), "ok_"),
                **latency(server_side.get(503, []), "shed_"),
            },
            recovery=recovery(rows, window.stopped, normal_ms),
        )
        print(f"overload: {over['sent_rps']:.0f} req/s sent, {over['statuses']}", flush=True)

        window = run_phase(runner, "after", 64, soak_rps, after_s)
        phases["after"] = summarise("after", window.started, window.stopped, soak_rps)
        end_rss, end_fds, end_tcp = idle_counts(proc.pid)
    finally:
        watcher.kill()
        runner.quit()
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()

    soak_samples = [s for s in samples if s.phase == "soak"]
    settled = soak_samples[: max(1, len(soak_samples) // 10)]  # the first tenth of the soak is its warm-up
    rss_base = max(s.rss_mib for s in settled)
    memory = {
        "idle_rss_mib": round(idle_rss, 1),
        "warm_rss_mib": round(warm_rss, 1),
        "soak_rss_after_warmup_mib": rss_base,
        "soak_rss_end_mib": soak_samples[-1].rss_mib,
        "soak_rss_max_mib": max(s.rss_mib for s in soak_samples),
        "soak_rss_growth": round(soak_samples[-1].rss_mib / rss_base - 1, 4),
        "end_rss_mib": round(end_rss, 1),
        "idle_fds": idle_fds,
        "warm_fds": warm_fds,
        "soak_fds_after_warmup": settled[-1].fds,
        "soak_fds_end": soak_samples[-1].fds,
        "soak_fds_max": max(s.fds for s in soak_samples),
        "end_fds": end_fds,
        "warm_tcp_sockets": warm_tcp,
        "end_tcp_sockets": end_tcp,
    }
    soak, over, after = phases["soak"], phases["overload"], phases["after"]
    budget = TARGETS["p99_budget_ms"]
    checks = {
        "soak: only 200/429/503": soak["unexpected"] == 0,
        f"soak: p99 <= {budget:.0f} ms": _le(soak["p99_ms"], budget),
        f"soak: RSS growth after warm-up <= {TARGETS['rss_growth_max']:.0%}": memory["soak_rss_growth"]
        <= TARGETS["rss_growth_max"],
        # Every connection closed; other descriptors may grow by a pooled SQLite connection (the database and its
        # WAL: 2) when a drift check and the log writer meet, never with traffic.
        "no fd leak: TCP sockets back to the idle count, others within 4": end_tcp == warm_tcp
        and end_fds <= warm_fds + 4,
        "overload: only 200/429/503, no timeouts or resets": over["unexpected"] == 0,
        "overload: sheds with 503": over["statuses"].get("503", 0) > 0,
        f"overload: the probe's 503s p99 <= {TARGETS['shed_p99_max_ms']:.0f} ms": _le(
            over["probe"]["shed_p99_ms"], TARGETS["shed_p99_max_ms"]
        ),
        f"overload: served 200s p99 <= {budget:.0f} ms (server side)": _le(over["server_side"]["ok_p99_ms"], budget),
        f"recovery <= {TARGETS['recovery_max_s']:.0f} s": _le(
            over["recovery"]["recovered_after_s"], TARGETS["recovery_max_s"]
        ),
        "after: only 200/429/503, the soak's throughput": after["unexpected"] == 0
        and after["ok_rps"] >= 0.9 * soak["ok_rps"],
    }
    result = {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version()},
        "mode": "short" if short else "full",
        "server_settings": sets,
        "images": len(photos),
        "targets": TARGETS,
        "capacity_rps": capacity,
        "phases": phases,
        "memory": memory,
        "samples": [asdict(s) for s in samples],
        "checks": checks,
        "passed": all(checks.values()),
    }
    report(result)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out} (the server's log: {log})")
    return 0 if result["passed"] or args.no_fail else 1


def _local(t: float) -> str:
    """A wall time as the access log writes it (local time, to the second)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t))


def _le(value: float | None, bound: float) -> bool:
    return value is not None and value <= bound


def report(result: dict[str, Any]) -> None:
    samples = result["samples"]
    print()
    print(f"{'phase':<9} {'offered/s':>9} {'sent/s':>7} {'200/s':>6} {'p50 ms':>7} {'p99 ms':>7} {'503/s':>6} "
          f"{'srv cpu':>7} {'gen cpu':>7} {'load1':>5}  statuses")  # fmt: skip
    for p in result["phases"].values():
        mine = [s for s in samples if s["phase"] == p["phase"]]
        srv = max((s["server_cpu"] for s in mine), default=0.0)
        gen = max((s["generator_cpu"] for s in mine), default=0.0)
        offered = f"{p['offered_rps']:.0f}" if p["offered_rps"] else "closed"
        shed = p["statuses"].get("503", 0) / p["seconds"]
        print(
            f"{p['phase']:<9} {offered:>9} {p['sent_rps']:>7.0f} {p['ok_rps']:>6.0f} {_f(p['p50_ms']):>7} "
            f"{_f(p['p99_ms']):>7} {shed:>6.0f} {srv:>7.2f} {gen:>7.2f} {p['load1']:>5}  {json.dumps(p['statuses'])}"
        )
    over = result["phases"]["overload"]
    print("(latencies above: as the load generator saw them, its own waits for a CPU included)")
    print(f"overload, probe process: {json.dumps(over['probe'])}")
    print(f"overload, server side:   {json.dumps(over['server_side'])}")
    print(f"recovery: {json.dumps(over['recovery'])}")
    print(f"memory and fds: {json.dumps(result['memory'])}")
    for name, ok in result["checks"].items():
        print(f"  [{'x' if ok else ' '}] {name}")


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


if __name__ == "__main__":
    sys.exit(main())
