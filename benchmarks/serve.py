"""Serving benchmark (issue 23): ``plantdx serve`` beside the in-process ceiling, a plain tuned FastAPI route,
LitServe and BentoML, on the same bundle and the same real leaf JPEGs, in one run.

    PYTHONPATH=src .venv/bin/python benchmarks/serve.py [--duration 10] [--levels 1 8 32] [--only plantdx litserve]
    ... benchmarks/serve.py --setup              # only make the contenders' venvs (.bench-venvs/, pinned)
    ... benchmarks/serve.py --tune               # sweep each contender's knobs at the top level -> serve-tuning.json
    ... benchmarks/serve.py --soak 300 [--rate R]  # plantdx serve + `plantdx monitor --watch`, constant-rate load

Every server does the same work per photo (plantdx's upload checks, decode, preprocessing, ONNX Runtime, OOD scoring
and post-processing: ``contenders/pipeline.py`` for the contenders, ``plantdx serve`` itself for plantdx); they
differ in how the bytes get in and the answer out. One server runs at a time: started, waited for, checked against
the in-process answers, warmed up, loaded by ``wrk`` at each concurrency (loopback only, bounded in time), stopped.
Per row: req/s, p50/p90/p99, non-2xx, and the CPU the server's process tree spent per request (/proc, before and
after each wrk run). LitServe and BentoML run in venvs of their own, made on first use.

Prints the table and the issue's targets against the numbers of the same run, and writes
``benchmarks/results/serve.json`` (``--soak``: ``serve-soak.json``). A benchmark, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE / "contenders"))  # the pipeline the contenders share is also the ceiling's

from pipeline import Pipeline  # noqa: E402

from plantdx.config import DatasetConfig, default_data_root  # noqa: E402
from plantdx.data.split import manifest_for  # noqa: E402
from plantdx.inference import default_bundle_path  # noqa: E402

RESULTS = HERE / "results"
CONTENDERS = HERE / "contenders"
VENVS = REPO / ".bench-venvs"
PORT = "{port}"  # replaced in a server's command by the port it gets
# The contenders' venvs: the contender, plus plantdx's own pins of what pipeline.py imports (numpy, Pillow,
# onnxruntime; PyYAML, pydantic-settings and FastAPI through plantdx.config and plantdx.serve.errors), so that the
# per-photo work runs on the same libraries as in plantdx's venv. A name without a version takes plantdx's pin.
CONTENDER_PINS = {
    "litserve": ["litserve==0.2.19", "python-multipart"],  # LitServe's docs: python-multipart for file uploads
    "bentoml": ["bentoml==1.4.40", "fastapi"],  # BentoML has Starlette, not FastAPI
}
PIPELINE_PINS = ["numpy", "pillow", "onnxruntime", "pyyaml", "pydantic-settings"]
VERSIONS_OF = (
    "python plantdx litserve bentoml fastapi starlette uvicorn httptools uvloop python-multipart pydantic "
    "onnxruntime numpy pillow"
).split()
TARGETS = {  # issue 23
    "vs_ceiling_at_top": 0.85,  # plantdx req/s at the top concurrency / the in-process ceiling's images/s
    "vs_best_other_at_top": 1.1,  # ... / the best other server's req/s (same body kind)
    "p99_at_top_ms": 250.0,
    "p50_at_1_over_ceiling_ms": 2.0,  # plantdx p50 at concurrency 1 - the ceiling's single-image p50
    "cpu_vs_pipeline": 1.15,  # plantdx CPU ms per request (worst level) / the ceiling's CPU ms per image
}
LUA = """
local paths = {%(paths)s}
local route, raw = "%(route)s", %(raw)s
local boundary = "----plantdxbench"
local requests, n = {}, 0
local threads = 0
function setup(thread)
  thread:set("first", threads * 37)  -- each wrk thread starts at another photo
  threads = threads + 1
end
function init(args)
  n = tonumber(first) or 0
  local headers = {["Content-Type"] = raw and "image/jpeg" or ("multipart/form-data; boundary=" .. boundary)}
  for i, p in ipairs(paths) do
    local f = assert(io.open(p, "rb")); local data = f:read("*all"); f:close()
    local body = data
    if not raw then
      body = "--" .. boundary .. "\\r\\nContent-Disposition: form-data; name=\\"file\\"; filename=\\"leaf.jpg\\"\\r\\n"
        .. "Content-Type: image/jpeg\\r\\n\\r\\n" .. data .. "\\r\\n--" .. boundary .. "--\\r\\n"
    end
    requests[i] = wrk.format("POST", route, headers, body)  -- formatted once: less client CPU per request
  end
end
function request()
  n = n %% #requests + 1
  return requests[n]
end
"""


# --- servers ------------------------------------------------------------------------------------------------------


@dataclass
class Server:
    """One configuration of one server: how to start it, where it is ready, which routes take which body."""

    name: str
    group: str  # plantdx, plain, litserve, bentoml, naive: what "the best other server" compares across
    cmd: list[str]  # PORT is replaced by the port
    ready: str
    routes: dict[str, str]  # body kind (multipart, raw) -> path
    settings: dict[str, Any]
    python: Path
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    levels: list[int] | None = None  # None: the run's levels


def base_env(pythonpath: list[Path]) -> dict[str, str]:
    """The shell's environment without plantdx settings or a venv, and offline telemetry."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PLANTDX_", "PYTHON", "VIRTUAL_ENV"))}
    env.update(PYTHONPATH=os.pathsep.join(map(str, pythonpath)), DO_NOT_TRACK="1", BENTOML_DO_NOT_TRACK="true")
    return env


def plantdx_server(name: str, bundle: Path, tmp: Path, batching: bool) -> Server:
    """``plantdx serve`` as shipped: prediction log (SQLite in its working folder), OOD and metrics on; only the rate
    limit lifted (one client address sends everything)."""
    cwd = tmp / re.sub(r"\W+", "-", name)
    cwd.mkdir(parents=True, exist_ok=True)
    settings = {"serve.rate_limit": "1000000000/minute", "serve.batching": batching}
    sets = [x for key, value in settings.items() for x in ("--set", f"{key}={json.dumps(value)}")]
    return Server(
        name,
        "plantdx",
        [sys.executable, "-m", "plantdx.cli", "serve", "--port", PORT, "--model", str(bundle), *sets],
        "/readyz",
        {"multipart": "/v1/predict", "raw": "/v1/predict"},
        settings | {"everything else": "defaults (monitor.log_url sqlite:///predictions.db in its own folder)"},
        Path(sys.executable),
        base_env([REPO / "src"]),
        cwd,
    )


def plain_server(bundle: Path, threads: int, levels: list[int] | None = None) -> Server:
    return Server(
        f"plain FastAPI sync route ({threads} threads)",
        "plain",
        [
            sys.executable,
            str(CONTENDERS / "plain_fastapi.py"),
            "--bundle",
            str(bundle),
            "--port",
            PORT,
            "--threads",
            str(threads),
        ],
        "/readyz",
        {"multipart": "/predict", "raw": "/predict/raw"},
        {"route_threads": threads, "ort_threads": 1, "sessions": 1, "loop": "uvloop", "http": "httptools"},
        Path(sys.executable),
        base_env([REPO / "src"]),
        levels=levels,
    )


def litserve_server(
    bundle: Path, batch: int, timeout: float, workers: int = 2, levels: list[int] | None = None
) -> Server:
    python = venv_python("litserve")
    label = f"up to {batch}, {timeout * 1000:g} ms" if batch > 1 else "no batching"
    return Server(
        f"LitServe 0.2.19, {workers} workers, {label}",
        "litserve",
        [
            str(python),
            str(CONTENDERS / "lit_server.py"),
            "--bundle",
            str(bundle),
            "--port",
            PORT,
            "--workers",
            str(workers),
            "--max-batch-size",
            str(batch),
            "--batch-timeout",
            str(timeout),
        ],
        "/health",
        {"multipart": "/predict"},
        {
            "workers": workers,
            "max_batch_size": batch,
            "batch_timeout_s": timeout if batch > 1 else None,
            "ort_threads": 1,
        },
        python,
        base_env([REPO / "src", CONTENDERS]),
        levels=levels,
    )


def bentoml_server(
    bundle: Path, tmp: Path, batching: bool, threads: int, max_latency_ms: int, levels: list[int] | None = None
) -> Server:
    python = venv_python("bentoml")
    label = f"adaptive batching up to 16, {max_latency_ms} ms" if batching else "no batching"
    env = base_env([REPO / "src"]) | {
        "BENTOML_HOME": str(tmp / "bentoml-home"),
        "BENCH_BUNDLE": str(bundle),
        "BENCH_BATCHING": "1" if batching else "0",
        "BENCH_THREADS": str(threads),
        "BENCH_MAX_BATCH": "16",
        "BENCH_MAX_LATENCY_MS": str(max_latency_ms),
    }
    return Server(
        f"BentoML 1.4.40, {threads} threads, {label}",
        "bentoml",
        [str(python.parent / "bentoml"), "serve", "bento_service:Leaves", "--host", "127.0.0.1", "--port", PORT],
        "/readyz",
        {"multipart": "/predict"},
        {
            "workers": 1,
            "threads": threads,
            "batchable": batching,
            "max_batch_size": 16 if batching else None,
            "max_latency_ms": max_latency_ms if batching else None,
            "ort_threads": 1,
        },
        python,
        env,
        CONTENDERS,
        levels=levels,
    )


def naive_server(bundle: Path) -> Server:
    return Server(
        "tutorial FastAPI async route + PyTorch",
        "naive",
        [sys.executable, str(HERE / "naive_server.py"), "--bundle", str(bundle), "--port", PORT],
        "/readyz",
        {"multipart": "/v1/predict"},
        {"model": "model.ts (TorchScript)", "route": "async def"},
        Path(sys.executable),
        base_env([REPO / "src"]),
    )


# Defaults of the knobs each contender is tuned on; `--tune` measures alternatives and the main run takes the best.
DEFAULT_CHOICES: dict[str, dict[str, Any]] = {
    "plain": {"threads": 2},
    "litserve-batch": {"batch_timeout": 0.005},
    "bentoml": {"threads": 2},
    "bentoml-batch": {"threads": 2, "max_latency_ms": 1000},
}
TUNING: dict[str, list[dict[str, Any]]] = {
    "plain": [{"threads": n} for n in (1, 2, 3, 4, 8)],
    "litserve-batch": [{"batch_timeout": t} for t in (0.001, 0.002, 0.005, 0.01, 0.02)],
    "bentoml": [{"threads": n} for n in (1, 2, 4)],
    "bentoml-batch": [{"threads": n, "max_latency_ms": ms} for n in (1, 2) for ms in (100, 1000)],
}


def tuned_server(key: str, choice: dict[str, Any], bundle: Path, tmp: Path, levels: list[int] | None = None) -> Server:
    if key == "plain":
        return plain_server(bundle, choice["threads"], levels)
    if key == "litserve-batch":
        return litserve_server(bundle, 16, choice["batch_timeout"], levels=levels)
    if key == "bentoml":
        return bentoml_server(bundle, tmp, False, choice["threads"], 1000, levels)
    return bentoml_server(bundle, tmp, True, choice["threads"], choice["max_latency_ms"], levels)


def lineup(bundle: Path, tmp: Path, choices: dict[str, dict[str, Any]], naive: bool) -> list[Server]:
    servers = [
        plantdx_server("plantdx serve (defaults: batching on)", bundle, tmp, batching=True),
        plantdx_server("plantdx serve (batching off)", bundle, tmp, batching=False),
        tuned_server("plain", choices["plain"], bundle, tmp),
        tuned_server("litserve-batch", choices["litserve-batch"], bundle, tmp),
        litserve_server(bundle, 1, 0.0),
        tuned_server("bentoml-batch", choices["bentoml-batch"], bundle, tmp),
        tuned_server("bentoml", choices["bentoml"], bundle, tmp),
    ]
    return servers + ([naive_server(bundle)] if naive else [])


# --- venvs of the contenders ----------------------------------------------------------------------------------------


def plantdx_pins() -> dict[str, str]:
    """name -> "name==version" for every pin in pyproject.toml (the base dependencies and the serve extra)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = {}
    for spec in [*project["dependencies"], *project["optional-dependencies"]["serve"]]:
        name = re.split(r"[=<>\[ ]", spec, maxsplit=1)[0].lower()
        pins[name] = spec.split(";")[0].strip()
    return pins


def requirements(name: str) -> list[str]:
    pins = plantdx_pins()
    own = [spec if "==" in spec else pins[spec] for spec in CONTENDER_PINS[name]]
    return own + [pins[n] for n in PIPELINE_PINS if n not in CONTENDER_PINS[name]]


def venv_python(name: str) -> Path:
    return VENVS / name / "bin" / "python"


def ensure_venv(name: str) -> Path:
    """``.bench-venvs/<name>`` with the contender and the pinned pipeline libraries; rebuilt when the pins change."""
    folder, reqs = VENVS / name, requirements(name)
    stamp = folder / ".requirements"
    python = venv_python(name)
    if python.exists() and stamp.exists() and stamp.read_text().split() == reqs:
        return python
    print(f"making {folder} ({' '.join(reqs)}) ...", flush=True)
    shutil.rmtree(folder, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True)
    out = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *reqs],
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        noise = ("WARNING: Location", "is ignored")
        text = "\n".join(line for line in (out.stdout + out.stderr).splitlines() if not line.startswith(noise))
        raise RuntimeError(f"pip install into {folder} failed:\n{text[-3000:]}")
    stamp.write_text("\n".join(reqs) + "\n")
    return python


def versions(python: Path, env: dict[str, str]) -> dict[str, str | None]:
    probe = (
        "import importlib.metadata as m, json, platform\n"
        "def v(n):\n"
        "    try: return m.version(n)\n"
        "    except m.PackageNotFoundError: return None\n"
        f"found = {{n: (platform.python_version() if n == 'python' else v(n)) for n in {VERSIONS_OF!r}}}\n"
        "import importlib.util; found['plantdx imported from'] = importlib.util.find_spec('plantdx').origin\n"
        "print(json.dumps(found))"
    )
    out = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, env=env, timeout=120)
    found: dict[str, str | None] = json.loads(out.stdout) if out.returncode == 0 else {}
    return {k: v for k, v in found.items() if v is not None}


# --- processes ------------------------------------------------------------------------------------------------------

TICKS = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def process_tree(root: int) -> dict[int, str]:
    """pid -> start time (to tell a reused pid) of ``root`` and all its descendants."""
    children: dict[int, list[int]] = defaultdict(list)
    starts: dict[int, str] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) is not None:
            children[int(fields[1])].append(int(entry.name))
            starts[int(entry.name)] = fields[19]
    tree, todo = {}, [root]
    while todo:
        pid = todo.pop()
        if pid in starts:
            tree[pid] = starts[pid]
            todo += children.get(pid, [])
    return tree


def tree_cpu(root: int) -> float:
    """CPU seconds (user + system) of ``root`` and its descendants, with the children they already reaped."""
    total = 0
    for pid in process_tree(root):
        if (fields := _stat(pid)) is not None:
            total += sum(int(x) for x in fields[11:15])  # utime, stime, cutime, cstime
    return total / TICKS


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the server's process group, SIGKILL after 30 s; then any descendant that left the group."""
    family = process_tree(proc.pid)
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    for pid, started in family.items():
        if pid != proc.pid and (fields := _stat(pid)) is not None and fields[19] == started and fields[0] != "Z":
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def started(server: Server, logdir: Path, timeout: float = 300) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """The server, running and ready (its ready route answers 200); stopped on the way out, whatever happened."""
    port = free_port()
    cmd = [part.replace(PORT, str(port)) for part in server.cmd]
    log = logdir / (re.sub(r"\W+", "-", server.name).strip("-") + ".log")
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=server.env, cwd=server.cwd, start_new_session=True
        )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"exited with {proc.returncode}: {log.read_text()[-1500:]}")
            try:
                if httpx.get(url + server.ready, timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"not ready after {timeout:.0f} s: {log.read_text()[-1500:]}")
            time.sleep(0.25)
        yield proc, url
    finally:
        stop(proc)


# --- load -----------------------------------------------------------------------------------------------------------


def write_lua(tmp: Path, paths: list[Path], route: str, raw: bool) -> Path:
    kind = "raw" if raw else "multipart"
    script = tmp / f"{kind}{re.sub(r'[^a-z0-9]+', '-', route)}.lua"
    text = LUA % {"paths": ", ".join(json.dumps(str(p)) for p in paths), "route": route, "raw": str(raw).lower()}
    script.write_text(text)
    return script


def _ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
    return round(float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}[unit], 3)


def parse_wrk(out: str) -> dict[str, Any]:
    """wrk's (and wrk2's) summary -> numbers."""
    done = re.search(r"(\d+) requests in ([\d.]+)(\w+)", out)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    lat = {p: _ms(v) for p, v in re.findall(r"^\s+(50|90|99)(?:\.0+)?%\s+(\S+)", out, re.M)}
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return {
        "requests": int(done.group(1)) if done else 0,
        "throughput_rps": float(rps.group(1)) if rps else 0.0,
        "p50_ms": lat.get("50"),
        "p90_ms": lat.get("90"),
        "p99_ms": lat.get("99"),
        "non_2xx": int(bad.group(1)) if bad else 0,
        "socket_errors": errors.group(1).strip() if errors else "",
    }


def run_wrk(url: str, script: Path, concurrency: int, duration: float, rate: float | None = None) -> dict[str, Any]:
    """One closed-loop wrk run (``rate``: wrk2's constant-rate run), at most 2 client threads (2 cores)."""
    tool = ["wrk2", "-R", str(int(rate))] if rate else ["wrk"]
    cmd = [
        *tool,
        f"-t{min(concurrency, 2)}",
        f"-c{concurrency}",
        f"-d{max(1, round(duration))}s",
        "--timeout",
        "30s",
        "--latency",
        "-s",
        str(script),
        url,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 90)
    if out.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed: {out.stderr[-500:]}")
    return {"concurrency": concurrency, **parse_wrk(out.stdout)}


def measured(
    proc: subprocess.Popen[bytes], url: str, script: Path, concurrency: int, duration: float
) -> dict[str, Any]:
    """A wrk run with the server tree's CPU around it."""
    before = tree_cpu(proc.pid)
    row = run_wrk(url, script, concurrency, duration)
    cpu = tree_cpu(proc.pid) - before
    # wrk's req/s counts every answer: a server shedding load with fast 503s would look faster than one answering
    ok = row["requests"] - row["non_2xx"]
    row["ok_rps"] = round(row["throughput_rps"] * ok / row["requests"], 1) if row["requests"] else 0.0
    row["server_cpu_s"] = round(cpu, 3)
    row["cpu_ms_per_request"] = round(1000 * cpu / row["requests"], 3) if row["requests"] else None
    return row


# --- the ceiling ----------------------------------------------------------------------------------------------------


def ceiling(bundle: Path, images: list[bytes], duration: float, streams: int = 2) -> dict[str, Any]:
    """The same per-photo work in-process (no HTTP): one session with 1 ORT thread, ``streams`` threads calling it,
    as many photos as they get through in ``duration``; and one stream's per-photo time."""
    pipe = Pipeline(bundle)

    def once(data: bytes) -> None:
        x = pipe.prepare(data, "image/jpeg")
        pipe.diagnose(pipe.forward(x[None])[0], x)

    for data in images[:20]:
        once(data)
    single = []
    for data in images:
        t = time.perf_counter()
        once(data)
        single.append((time.perf_counter() - t) * 1000)
    count = [0] * streams
    cpu0, t0 = time.process_time(), time.perf_counter()
    stop_at = time.monotonic() + duration

    def stream(k: int) -> None:
        i = k
        while time.monotonic() < stop_at:
            once(images[i % len(images)])
            i += streams
            count[k] += 1

    workers = [threading.Thread(target=stream, args=(k,)) for k in range(streams)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return {
        "single_p50_ms": round(statistics.median(single), 3),
        "single_p99_ms": round(sorted(single)[int(0.99 * (len(single) - 1))], 3),
        "throughput_ips": round(sum(count) / elapsed, 1),
        "cpu_ms_per_image": round(1000 * cpu / sum(count), 3),
        "streams": streams,
        "ort_threads_per_stream": 1,
        "work": "plantdx decode_upload + Predictor.preprocess + forward (logits, embedding) + answer (OOD, abstain)",
    }


# --- one run --------------------------------------------------------------------------------------------------------


def leaf_photos(data_root: Path, count: int) -> list[Path]:
    """``count`` test-split JPEGs, taken class by class in turn (the split lists them class after class)."""
    rows = manifest_for(DatasetConfig(root=data_root)).split("test")
    by_class: dict[str, list[Path]] = defaultdict(list)
    for row in rows:
        by_class[row.label].append(data_root / row.path)
    columns = [by_class[label] for label in sorted(by_class)]
    picked = [col[i] for i in range(max(map(len, columns))) for col in columns if i < len(col)]
    return picked[:count]


def answer_label(body: Any) -> str | None:
    if isinstance(body, list) and body:  # BentoML's batchable API answers a batch per request
        body = body[0]
    return body.get("prediction") if isinstance(body, dict) else None


def check_answers(url: str, routes: dict[str, str], photos: list[bytes], expected: list[str]) -> dict[str, Any]:
    """The server's answers to a few photos, by each body kind, against the in-process ones."""
    report = {}
    with httpx.Client(timeout=60) as client:
        for kind, route in routes.items():
            agree, statuses = 0, []
            for data, label in zip(photos, expected, strict=True):
                if kind == "raw":
                    r = client.post(url + route, content=data, headers={"Content-Type": "image/jpeg"})
                else:
                    r = client.post(url + route, files={"file": ("leaf.jpg", data, "image/jpeg")})
                statuses.append(r.status_code)
                try:
                    agree += r.status_code == 200 and answer_label(r.json()) == label
                except ValueError:  # not JSON: counted as a wrong answer
                    pass
            report[kind] = {"agree": agree, "of": len(photos), "statuses": sorted(set(statuses))}
    return report


def bench_server(
    server: Server, args: argparse.Namespace, tmp: Path, paths: list[Path], check: tuple[list[bytes], list[str]]
) -> dict[str, Any]:
    levels = server.levels or args.levels
    kinds = {k: v for k, v in server.routes.items() if k in args.bodies}
    result: dict[str, Any] = {"name": server.name, "group": server.group, "settings": server.settings, "rows": []}
    result["versions"] = versions(server.python, server.env)
    t0 = time.monotonic()
    try:
        with started(server, tmp) as (proc, url):
            result["startup_s"] = round(time.monotonic() - t0, 1)
            result["check"] = check_answers(url, kinds, *check)
            for kind, route in kinds.items():
                if result["check"][kind]["statuses"] != [200]:
                    result["rows"].append({"body": kind, "error": f"answers {result['check'][kind]['statuses']}"})
                    continue
                script = write_lua(tmp, paths, route, raw=kind == "raw")
                run_wrk(url, script, 8, args.warmup)  # warm-up: connections, caches, the batcher's statistics
                for c in levels:
                    time.sleep(1)  # let the previous run's queue drain
                    row = {"body": kind, **measured(proc, url, script, c, args.duration)}
                    result["rows"].append(row)
                    print(
                        f"  {kind:<9} c={c:<3} {row['throughput_rps']:7.1f} req/s  p50 {row['p50_ms']} ms  "
                        f"p99 {row['p99_ms']} ms  non-2xx {row['non_2xx']}  "
                        f"cpu {row['cpu_ms_per_request']} ms/req",
                        flush=True,
                    )
    except Exception as exc:  # one server failing is that server's row; the others still run
        result["error"] = f"{type(exc).__name__}: {exc}"
        print(f"  failed: {result['error'][:800]}", flush=True)
    return result


# --- report ---------------------------------------------------------------------------------------------------------


def row_at(result: dict[str, Any], kind: str, c: int) -> dict[str, Any] | None:
    return next((r for r in result["rows"] if r.get("body") == kind and r.get("concurrency") == c), None)


def targets(ceil: dict[str, Any], results: list[dict[str, Any]], levels: list[int]) -> list[dict[str, Any]]:
    """Each plantdx configuration and body kind against the issue's targets, from this run's numbers."""
    top, one = max(levels), min(levels)
    out = []
    for res in (r for r in results if r["group"] == "plantdx"):
        for kind in sorted({r["body"] for r in res["rows"] if "error" not in r}):
            at_top, at_one = row_at(res, kind, top), row_at(res, kind, one)
            others = [
                (row["ok_rps"], o["name"], row["body"])
                for o in results
                if o["group"] not in ("plantdx", "naive")
                for row in o["rows"]
                if row.get("concurrency") == top and "error" not in row
            ]
            same = [x for x in others if x[2] == kind] or [x for x in others if x[2] == "multipart"]
            best = max(same, default=None)
            cpu = [r["cpu_ms_per_request"] for r in res["rows"] if r.get("body") == kind and r["cpu_ms_per_request"]]
            measured_values = {
                "vs_ceiling_at_top": at_top["ok_rps"] / ceil["throughput_ips"] if at_top else None,
                "vs_best_other_at_top": at_top["ok_rps"] / best[0] if at_top and best else None,
                "p99_at_top_ms": at_top["p99_ms"] if at_top else None,
                "p50_at_1_over_ceiling_ms": (
                    at_one["p50_ms"] - ceil["single_p50_ms"] if at_one and at_one["p50_ms"] is not None else None
                ),
                "cpu_vs_pipeline": max(cpu) / ceil["cpu_ms_per_image"] if cpu else None,
            }
            met = {
                key: None if v is None else (v >= TARGETS[key] if key.startswith("vs_") else v <= TARGETS[key])
                for key, v in measured_values.items()
            }
            out.append(
                {
                    "server": res["name"],
                    "body": kind,
                    "measured": measured_values,
                    "met": met,
                    "best_other": {"name": best[1], "body": best[2], "ok_rps": best[0]} if best else None,
                    "cpu_ms_per_request_range": [min(cpu), max(cpu)] if cpu else None,
                }
            )
    return out


def print_report(
    ceil: dict[str, Any], results: list[dict[str, Any]], goals: list[dict[str, Any]], levels: list[int]
) -> None:
    one, top = min(levels), max(levels)
    width = max([40, *(len(res["name"]) for res in results)])

    def num(value: float | None, spec: str = ">8.2f") -> str:
        return format(value, spec) if value is not None else format("-", spec.split(".")[0])

    print()
    print(f"{'server':<{width}} {'body':<9} {'c':>3} {'req/s':>8} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} "
          f"{'non-2xx':>8} {'2xx/s':>8} {'CPU ms/req':>10}")  # fmt: skip
    for res in results:
        if "error" in res and not res["rows"]:
            print(f"{res['name']:<{width}} failed: {res['error'][:100]}")
        for r in res["rows"]:
            if "error" in r:
                print(f"{res['name']:<{width}} {r['body']:<9} failed: {r['error']}")
                continue
            print(f"{res['name']:<{width}} {r['body']:<9} {r['concurrency']:>3} {r['throughput_rps']:>8.1f} "
                  f"{num(r['p50_ms'])} {num(r['p90_ms'])} {num(r['p99_ms'])} {r['non_2xx']:>8} {r['ok_rps']:>8.1f} "
                  f"{num(r['cpu_ms_per_request'], '>10.2f')}")  # fmt: skip

    def cell(r: dict[str, Any] | None, extra: str | None = None) -> str:
        if r is None:
            return ""
        value = f"{r['ok_rps']:.0f}" + (f" [{r['non_2xx']} non-2xx]" if r["non_2xx"] else "")
        return f"{value} ({r[extra]:.1f} ms)" if extra and r.get(extra) is not None else value

    print()
    mids = [c for c in levels if c not in (one, top)]
    head = [f"c={one} (p50)", *(f"c={c}" for c in mids), f"c={top} (p99)", "CPU ms / request"]
    print("| server | body | " + " | ".join(head) + " |")
    print("|---|---|" + "---|" * len(head))
    ceiling_cells = [
        f"{1000 / ceil['single_p50_ms']:.0f} ({ceil['single_p50_ms']:.1f} ms, one stream)",
        *("" for _ in mids),
        f"{ceil['throughput_ips']:.0f}",
        f"{ceil['cpu_ms_per_image']:.1f}",
    ]
    print(
        f"| in-process ceiling: decode + preprocess + ORT + answer, {ceil['streams']} streams x 1 thread | - | "
        + " | ".join(ceiling_cells)
        + " |"
    )
    for res in results:
        for kind in dict.fromkeys(r["body"] for r in res["rows"] if "error" not in r):
            cpu = [
                r["cpu_ms_per_request"] for r in res["rows"] if r.get("body") == kind and r.get("cpu_ms_per_request")
            ]
            cpu_text = f"{min(cpu):.1f}-{max(cpu):.1f}" if cpu else ""
            cells = [
                cell(row_at(res, kind, one), "p50_ms"),
                *(cell(row_at(res, kind, c)) for c in mids),
                cell(row_at(res, kind, top), "p99_ms"),
                cpu_text,
            ]
            print(f"| {res['name']} | {kind} | " + " | ".join(cells) + " |")

    print()
    print(f"targets (issue 23) at c={top} and c={one}, against this run:")
    labels = {
        "vs_ceiling_at_top": f"2xx/s at c={top} / ceiling's images/s",
        "vs_best_other_at_top": f"2xx/s at c={top} / best other's",
        "p99_at_top_ms": f"p99 at c={top}, ms",
        "p50_at_1_over_ceiling_ms": f"p50 at c={one} - ceiling's single p50, ms",
        "cpu_vs_pipeline": "CPU ms/request (worst c) / ceiling's",
    }
    for goal in goals:
        best = goal["best_other"]
        print(
            f"  {goal['server']}, {goal['body']}" + (f" (best other: {best['name']}, {best['body']})" if best else "")
        )
        for key, label in labels.items():
            value, ok = goal["measured"][key], goal["met"][key]
            verdict = "n/a" if ok is None else ("met" if ok else "MISSED")
            sign = ">=" if key.startswith("vs_") else "<="
            shown = "-" if value is None else f"{value:.2f}"
            print(f"    {label:<42} {shown:>8}  (target {sign} {TARGETS[key]:g})  {verdict}")


def machine() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = re.search(r"model name\s*:\s*(.*)", cpuinfo)
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model.group(1) if model else platform.processor(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg_at_start": os.getloadavg(),
        "wrk": subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split("\n", 1)[0],
        "wrk2": shutil.which("wrk2"),
        "nice": os.nice(0),
    }


def bundle_info(bundle: Path) -> dict[str, Any]:
    card = json.loads((bundle / "card.json").read_text()) if (bundle / "card.json").exists() else {}
    onnx = bundle / "model.onnx"
    return {
        "path": str(bundle),
        "architecture": card.get("architecture"),
        "version": card.get("version") or card.get("name"),
        "model_onnx_sha256": hashlib.sha256(onnx.read_bytes()).hexdigest(),
        "model_onnx_mb": round(onnx.stat().st_size / 1e6, 2),
    }


def load_choices(bundle: dict[str, Any], path: Path) -> tuple[dict[str, dict[str, Any]], str]:
    """The contenders' knobs: the best of the last ``--tune`` on this bundle, else the defaults."""
    if path.exists():
        tuned = json.loads(path.read_text())
        if tuned.get("bundle", {}).get("model_onnx_sha256") == bundle["model_onnx_sha256"]:
            return DEFAULT_CHOICES | tuned["choices"], f"{path.name} of {tuned['measured_at']}"
    return DEFAULT_CHOICES, "defaults (no --tune on this bundle yet)"


# --- modes ----------------------------------------------------------------------------------------------------------


def prepare(args: argparse.Namespace) -> tuple[Path, list[Path], list[bytes], dict[str, Any]]:
    tmp = Path(tempfile.mkdtemp(prefix="plantdx-bench-serve-"))
    paths = leaf_photos(args.data, args.images)
    if not paths:
        raise SystemExit(f"no test-split photos under {args.data}")
    return tmp, paths, [p.read_bytes() for p in paths], bundle_info(args.bundle)


def main_run(args: argparse.Namespace) -> None:
    for name in ("litserve", "bentoml"):
        if not args.only or any(o.lower() in name for o in args.only):
            ensure_venv(name)
    tmp, paths, photos, bundle = prepare(args)
    choices, source = load_choices(bundle, args.tuning)
    servers = [
        s
        for s in lineup(args.bundle, tmp, choices, args.naive)
        if not args.only or any(o.lower() in f"{s.group} {s.name}".lower() for o in args.only)
    ]
    rows = sum(len(s.levels or args.levels) * len([k for k in s.routes if k in args.bodies]) for s in servers)
    minutes = (rows * (args.duration + 1.5) + len(servers) * 25 + 2 * args.duration + 40) / 60
    print(
        f"{len(photos)} test-split JPEGs, bundle {bundle['path']} ({bundle['architecture']}); contender knobs: "
        f"{source}; {len(servers)} servers, {rows} rows of {args.duration:g} s: about "
        f"{minutes:.0f} min",
        flush=True,
    )
    started_at, host = datetime.now(UTC), machine()
    print("in-process ceiling ...", flush=True)
    ceil = ceiling(args.bundle, photos, args.duration)
    print(
        f"  {ceil['throughput_ips']} images/s, single p50 {ceil['single_p50_ms']} ms, "
        f"{ceil['cpu_ms_per_image']} CPU ms/image",
        flush=True,
    )
    pipe = Pipeline(args.bundle)
    expected = [pipe(data, "image/jpeg")["prediction"] for data in photos[: args.check]]
    results = []
    for server in servers:
        print(f"{server.name} ...", flush=True)
        results.append(bench_server(server, args, tmp, paths, (photos[: args.check], expected)))
    print("in-process ceiling again (did the machine change during the run?) ...", flush=True)
    after = ceiling(args.bundle, photos, args.duration)
    ceil["throughput_ips_at_end"] = after["throughput_ips"]
    goals = targets(ceil, results, args.levels)
    print_report(ceil, results, goals, args.levels)
    drift = after["throughput_ips"] / ceil["throughput_ips"] - 1
    note = "; more than 10 %: the machine was not quiet, compare with care" if abs(drift) > 0.1 else ""
    print(f"\nceiling at the end: {after['throughput_ips']} images/s ({drift:+.0%} on the start{note})")
    report = {
        "measured_at": started_at.isoformat(timespec="seconds"),
        "took_s": round((datetime.now(UTC) - started_at).total_seconds()),
        "machine": host | {"loadavg_at_end": os.getloadavg()},
        "bundle": bundle,
        "images": {
            "count": len(photos),
            "source": f"test split of {args.data}, class by class",
            "mean_kb": round(sum(map(len, photos)) / len(photos) / 1000, 1),
        },
        "settings": {
            "duration_s": args.duration,
            "levels": args.levels,
            "warmup_s": args.warmup,
            "bodies": args.bodies,
            "wrk_threads": "min(concurrency, 2)",
            "contender_knobs": source,
            "pause_between_rows_s": 1,
        },
        "ceiling": ceil,
        "servers": results,
        "targets": {"goals": TARGETS, "plantdx": goals},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out} (server logs in {tmp})")


def tune(args: argparse.Namespace) -> None:
    """Each contender knob's alternatives at the top concurrency (multipart); the best req/s is kept per knob."""
    for name in ("litserve", "bentoml"):
        ensure_venv(name)
    tmp, paths, photos, bundle = prepare(args)
    top = [max(args.levels)]
    pipe = Pipeline(args.bundle)
    expected = [pipe(data, "image/jpeg")["prediction"] for data in photos[: args.check]]
    args.bodies = ["multipart"]
    choices, tried = {}, {}
    keys = [k for k in TUNING if not args.only or any(o.lower() in k for o in args.only)]
    for key in keys:
        tried[key] = []
        for choice in TUNING[key]:
            server = tuned_server(key, choice, args.bundle, tmp, top)
            print(f"{key} {choice}: {server.name} ...", flush=True)
            result = bench_server(server, args, tmp, paths, (photos[: args.check], expected))
            row = row_at(result, "multipart", top[0])
            tried[key].append({"choice": choice, "row": row, "error": result.get("error")})
        measured_ok = [t for t in tried[key] if t["row"]]
        if measured_ok:  # the most answered with a 2xx per second
            choices[key] = max(measured_ok, key=lambda t: t["row"]["ok_rps"])["choice"]
            print(f"  best {key}: {choices[key]}", flush=True)
    previous = json.loads(args.tuning.read_text()) if args.tuning.exists() else {}
    if previous.get("bundle", {}).get("model_onnx_sha256") == bundle["model_onnx_sha256"]:
        choices = previous.get("choices", {}) | choices  # knobs not tuned now keep their last choice
    args.tuning.parent.mkdir(parents=True, exist_ok=True)
    args.tuning.write_text(
        json.dumps(
            {
                "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "machine": machine(),
                "bundle": bundle,
                "duration_s": args.duration,
                "concurrency": top[0],
                "choices": choices,
                "tried": tried,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {args.tuning}")


# --- soak -----------------------------------------------------------------------------------------------------------


def http_request(route: str, port: int, data: bytes, raw: bool) -> bytes:
    boundary = "----plantdxsoak"
    if raw:
        content_type, body = "image/jpeg", data
    else:
        content_type = f"multipart/form-data; boundary={boundary}"
        body = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="leaf.jpg"\r\n'
                "Content-Type: image/jpeg\r\n\r\n"
            ).encode()
            + data
            + f"\r\n--{boundary}--\r\n".encode()
        )
    head = (
        f"POST {route} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def read_status(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """One HTTP/1.1 response off the connection -> (status, whether the connection stays open)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    if "content-length" in headers:
        await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        while size := int((await reader.readline()).split(b";")[0].strip() or b"0", 16):
            await reader.readexactly(size + 2)
        await reader.readexactly(2)
    return status, headers.get("connection", "").lower() != "close"


async def open_loop(
    port: int, requests: list[bytes], rate: float, seconds: float, max_conns: int = 512
) -> list[tuple[float, float, int, float]]:
    """Requests sent at a constant ``rate`` whatever the answers do (an open loop: a slow server is not sent fewer).
    Latency runs from the scheduled send time, so the generator's own delays count against the server rather than
    hide it; how late each send started is kept too, to tell the two apart.
    -> (scheduled offset s, latency ms, status (0: connection error, -1: no connection left), send lateness ms)."""
    loop = asyncio.get_running_loop()
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []  # with when last used, newest last
    results: list[tuple[float, float, int, float]] = []
    conns = 0
    t0 = loop.time() + 0.2

    def drop(writer: asyncio.StreamWriter) -> None:
        nonlocal conns
        conns -= 1
        writer.close()

    def fresh_idle() -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """The most recently used idle connection; one idle for 2 s the server may be closing (keep-alive)."""
        while idle:
            reader, writer, used = idle.pop()
            if loop.time() - used < 2.0:
                return reader, writer
            drop(writer)
        return None

    async def one(i: int, at: float) -> None:
        nonlocal conns
        late = (loop.time() - at) * 1000
        conn = fresh_idle()
        retry, status, keep = conn is not None, 0, False
        while True:
            if conn is None:
                if conns >= max_conns:
                    results.append((at - t0, math.nan, -1, late))
                    return
                try:
                    conn = await asyncio.open_connection("127.0.0.1", port)
                    conns += 1
                except OSError:
                    break
            try:
                conn[1].write(requests[i % len(requests)])
                status, keep = await asyncio.wait_for(read_status(conn[0]), timeout=30)
                break
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError):
                drop(conn[1])
                conn = None
                if not retry:
                    break
                retry = False  # a reused connection the server had just closed: once more on a new one
        results.append((at - t0, (loop.time() - at) * 1000, status, late))
        if conn is not None and keep:
            idle.append((*conn, loop.time()))
        elif conn is not None:
            drop(conn[1])

    tasks = set()
    for i in range(int(rate * seconds)):
        at = t0 + i / rate
        if (delay := at - loop.time()) > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one(i, at))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(tasks, timeout=60)
    for _, writer, _ in idle:
        writer.close()
    return results


def pct(values: list[float], q: float) -> float | None:
    values = sorted(v for v in values if not math.isnan(v))
    return round(values[min(len(values) - 1, int(q * len(values)))], 2) if values else None


def soak_rate(args: argparse.Namespace) -> float:
    """``--rate``, else 80 % of plantdx's (defaults) req/s at the top concurrency in the last benchmark's JSON."""
    if args.rate is not None:
        return float(args.rate)
    last = json.loads(args.out.read_text()) if args.out.exists() else {}
    top = max(last.get("settings", {}).get("levels", [32]))
    res = next((r for r in last.get("servers", []) if r["name"].startswith("plantdx serve (defaults")), None)
    row = row_at(res, args.soak_body, top) if res else None
    if row is None:
        raise SystemExit(f"--rate not given and {args.out} has no plantdx row at c={top}: run the benchmark first")
    rate = round(0.8 * row["ok_rps"], 1)
    print(f"rate: 80 % of plantdx's {row['ok_rps']} 2xx/s at c={top} in {args.out.name}: {rate} req/s")
    return rate


CHECK_LINE = re.compile(r"no verdict yet|drift(: none| DETECTED)")  # what `plantdx monitor` prints per check


def soak(args: argparse.Namespace) -> None:
    """``plantdx serve`` (defaults, rate limit lifted) at a constant rate for ``--soak`` seconds, while
    ``plantdx monitor --watch`` checks drift beside it on the same prediction log every ``--check-interval`` s;
    p50/p99 per minute, with the CPU of the server, the monitor and the load generator."""
    rate = soak_rate(args)
    tmp, paths, photos, bundle = prepare(args)
    server = plantdx_server("plantdx serve (defaults, soak)", args.bundle, tmp, batching=True)
    monitor_cmd = [sys.executable, "-m", "plantdx.cli", "monitor", "--watch", "--model", str(args.bundle),
                   "--set", f"monitor.check_interval_s={args.check_interval}"]  # fmt: skip
    generator = "wrk2" if shutil.which("wrk2") else "python open loop"
    monitor_log, minutes = tmp / "monitor.log", []
    with started(server, tmp) as (proc, url), monitor_log.open("wb") as out:
        port = int(url.rsplit(":", 1)[1])
        monitor = subprocess.Popen(monitor_cmd, stdout=out, stderr=subprocess.STDOUT, cwd=server.cwd,
                                   env=server.env | {"PYTHONUNBUFFERED": "1"}, start_new_session=True)  # fmt: skip
        try:
            deadline = time.monotonic() + 180  # its first check (Evidently's import alone takes seconds)
            while not CHECK_LINE.search(monitor_log.read_text()) and time.monotonic() < deadline:
                if monitor.poll() is not None:
                    raise SystemExit(f"plantdx monitor exited: {monitor_log.read_text()[-1500:]}")
                time.sleep(0.5)
            route, raw = server.routes[args.soak_body], args.soak_body == "raw"
            print(f"soak: {rate} req/s for {args.soak:g} s ({generator}), drift checks every {args.check_interval:g} s")
            script = write_lua(tmp, paths, route, raw)
            run_wrk(url, script, 8, args.warmup)
            requests = [http_request(route, port, data, raw) for data in photos]
            left = args.soak
            checks = len(CHECK_LINE.findall(monitor_log.read_text()))  # the one before the load is not counted
            last = (tree_cpu(proc.pid), tree_cpu(monitor.pid), time.process_time(), time.monotonic(), checks)
            while left > 0:
                span = min(60.0, left)
                if generator == "wrk2":
                    row = run_wrk(url, script, 64, span, rate=rate)
                    stats = {k: row[k] for k in ("requests", "p50_ms", "p90_ms", "p99_ms", "non_2xx", "socket_errors")}
                else:
                    got = asyncio.run(open_loop(port, requests, rate, span))
                    lat = [ms for _, ms, status, _ in got if status > 0]
                    stats = {"requests": len(got), "p50_ms": pct(lat, 0.5), "p90_ms": pct(lat, 0.9),
                             "p99_ms": pct(lat, 0.99), "max_ms": pct(lat, 1.0),
                             "non_2xx": sum(1 for _, _, s, _ in got if s >= 300),
                             "errors": sum(1 for _, _, s, _ in got if s <= 0),
                             "send_late_p99_ms": pct([late for *_, late in got], 0.99)}  # fmt: skip
                checks = len(CHECK_LINE.findall(monitor_log.read_text()))
                now = (tree_cpu(proc.pid), tree_cpu(monitor.pid), time.process_time(), time.monotonic(), checks)
                stats |= {"minute": len(minutes), "seconds": round(span, 1),
                          "server_cores": round((now[0] - last[0]) / (now[3] - last[3]), 2),
                          "monitor_cpu_s": round(now[1] - last[1], 2), "generator_cpu_s": round(now[2] - last[2], 2),
                          "drift_checks": now[4] - last[4]}  # fmt: skip
                last = now
                minutes.append(stats)
                print(f"  minute {stats['minute']}: {stats['requests']} requests, p50 {stats['p50_ms']} ms, "
                      f"p99 {stats['p99_ms']} ms, non-2xx {stats['non_2xx']}; server {stats['server_cores']} cores, "
                      f"{stats['drift_checks']} drift checks ({stats['monitor_cpu_s']} CPU s)", flush=True)  # fmt: skip
                left -= span
        finally:
            stop(monitor)
    log = monitor_log.read_text()
    verdicts = len(re.findall(r"drift(: none| DETECTED)", log))
    worst = max((m["p99_ms"] for m in minutes if m["p99_ms"] is not None), default=None)
    met = worst is not None and worst <= TARGETS["p99_at_top_ms"] and not any(m["non_2xx"] for m in minutes)
    report = {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "bundle": bundle,
        "rate_rps": rate,
        "seconds": args.soak,
        "body": args.soak_body,
        "generator": generator,
        "check_interval_s": args.check_interval,
        "server": {"name": server.name, "settings": server.settings, "versions": versions(server.python, server.env)},
        "minutes": minutes,
        "drift_checks": {"with_verdict": verdicts, "without": len(re.findall("no verdict yet", log))},
        "target": {"p99_ms_every_minute": TARGETS["p99_at_top_ms"], "worst_minute_p99_ms": worst, "met": met},
    }
    out = args.out.with_name("serve-soak.json")
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"worst minute p99 {worst} ms (target <= {TARGETS['p99_at_top_ms']:.0f} ms and no non-2xx: "
          f"{'met' if met else 'MISSED'}); {verdicts} drift verdicts; wrote {out} (logs in {tmp})")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, default=default_bundle_path())
    parser.add_argument("--data", type=Path, default=default_data_root())
    parser.add_argument("--images", type=int, default=200, help="test-split JPEGs the load cycles through")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per row")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of load before a server's rows")
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--bodies", nargs="+", choices=["multipart", "raw"], default=["multipart", "raw"])
    parser.add_argument("--only", nargs="+", help="servers whose group or name contains one of these words")
    parser.add_argument("--naive", action="store_true", help="add the tutorial async-route + PyTorch baseline")
    parser.add_argument("--check", type=int, default=8, help="photos whose answers each server must get right")
    parser.add_argument("--out", type=Path, default=RESULTS / "serve.json")
    parser.add_argument("--tuning", type=Path, default=RESULTS / "serve-tuning.json")
    parser.add_argument("--setup", action="store_true", help="only make the contenders' venvs")
    parser.add_argument("--tune", action="store_true", help="sweep the contenders' knobs; the main run uses the best")
    parser.add_argument("--soak", type=float, metavar="SECONDS", help="soak plantdx serve beside plantdx monitor")
    parser.add_argument("--rate", type=float, help="soak req/s (default: 80 %% of plantdx's top row in --out)")
    parser.add_argument("--soak-body", choices=["multipart", "raw"], default="multipart")
    parser.add_argument("--check-interval", type=float, default=60.0, help="soak: seconds between drift checks")
    args = parser.parse_args()
    args.bundle = args.bundle.resolve()
    # A SIGTERM (a CI timeout, a kill) unwinds like Ctrl-C, so the running server is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if not Path(sys.modules["plantdx"].__file__ or "").is_relative_to(REPO / "src"):
        print(
            f"warning: plantdx imported from {sys.modules['plantdx'].__file__}, the servers run {REPO / 'src'}; "
            "run with PYTHONPATH=src",
            file=sys.stderr,
        )
    if args.setup:
        for name in CONTENDER_PINS:
            print(f"{name}: {ensure_venv(name)}")
    elif args.tune:
        tune(args)
    elif args.soak:
        soak(args)
    else:
        main_run(args)


if __name__ == "__main__":
    main()
