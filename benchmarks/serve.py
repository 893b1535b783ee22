"""Serving benchmark: the plantdx service against the raw pipeline and the naive first draft, on real leaf JPEGs.

    .venv/bin/python benchmarks/serve.py [--bundle DIR] [--checkpoint CKPT] [--duration 10]

Loads go only to 127.0.0.1 and are bounded in time (wrk, from Debian's `wrk` package). Prints a table and writes
benchmarks/results/serve.json. A benchmark, not a test: it asserts nothing, it measures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from plantdx.config import DatasetConfig, default_data_root
from plantdx.data.split import manifest_for
from plantdx.inference import Predictor, default_bundle_path
from plantdx.serve.uploads import decode_upload

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
LUA = """
local paths = {%s}
local bodies = {}
local boundary = "----plantdxbench"
local n = 0
function init(args)
  for i, p in ipairs(paths) do
    local f = io.open(p, "rb"); local data = f:read("*all"); f:close()
    bodies[i] = "--" .. boundary
      .. "\\r\\nContent-Disposition: form-data; name=\\"file\\"; filename=\\"leaf.jpg\\"\\r\\n"
      .. "Content-Type: image/jpeg\\r\\n\\r\\n" .. data .. "\\r\\n--" .. boundary .. "--\\r\\n"
  end
end
function request()
  n = n %% #bodies + 1
  return wrk.format("POST", "/v1/predict", {["Content-Type"] = "multipart/form-data; boundary=" .. boundary}, bodies[n])
end
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError("server not ready")


def _ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def run_wrk(url: str, script: Path, concurrency: int, duration: float) -> dict[str, Any]:
    threads = min(concurrency, 2)
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{concurrency}", f"-d{int(duration)}s", "--timeout", "30s", "--latency",
         "-s", str(script), url],
        capture_output=True, text=True, timeout=duration + 60, check=True,
    ).stdout  # fmt: skip
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    lat = {p: _ms(v) for p, v in re.findall(r"^\s+(50|90|99)%\s+(\S+)", out, re.M)}
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return {
        "concurrency": concurrency,
        "throughput_rps": rps,
        "p50_ms": lat.get("50"),
        "p90_ms": lat.get("90"),
        "p99_ms": lat.get("99"),
        "non_2xx": int(bad.group(1)) if bad else 0,
        "socket_errors": errors.group(1) if errors else "",
    }


def bench_server(
    cmd: list[str], url: str, script: Path, levels: list[int], duration: float, log: Path
) -> list[dict[str, Any]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLANTDX_")}
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env)
    try:
        wait_ready(url, proc)
        run_wrk(url, script, 4, 2)  # warm-up
        return [run_wrk(url, script, c, duration) for c in levels]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def raw_pipeline(bundle: Path, images: list[bytes], streams: int, threads: int, duration: float) -> dict[str, Any]:
    """Decode + preprocess + ONNX Runtime in-process: the ceiling a server can approach."""
    predictor = Predictor(bundle, threads=threads)

    def once(data: bytes) -> None:
        image = decode_upload(
            data, "image/jpeg", max_bytes=10 * 2**20, max_pixels=40_000_000, min_side=predictor.resize
        )
        predictor.logits(predictor.preprocess(image)[None])

    for data in images[:20]:
        once(data)
    single = []
    for data in images[:200]:
        t = time.perf_counter()
        once(data)
        single.append((time.perf_counter() - t) * 1000)
    count = [0] * streams
    stop = time.monotonic() + duration

    def stream(k: int) -> None:
        i = k
        while time.monotonic() < stop:
            once(images[i % len(images)])
            i += streams
            count[k] += 1

    workers = [threading.Thread(target=stream, args=(k,)) for k in range(streams)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return {
        "single_p50_ms": statistics.median(single),
        "single_p99_ms": sorted(single)[int(0.99 * (len(single) - 1))],
        "throughput_ips": sum(count) / duration,
        "streams": streams,
        "threads_per_stream": threads,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, default=default_bundle_path())
    parser.add_argument("--checkpoint", type=Path, help="Lightning checkpoint for the naive baseline (else model.ts)")
    parser.add_argument("--data", type=Path, default=default_data_root())
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 8, 32])
    args = parser.parse_args()

    rows = manifest_for(DatasetConfig(root=args.data)).split("test")[: args.images]
    paths = [args.data / r.path for r in rows]
    images = [p.read_bytes() for p in paths]
    tmp = Path(tempfile.mkdtemp(prefix="plantdx-bench-"))
    script = tmp / "post.lua"
    script.write_text(LUA % ", ".join(json.dumps(str(p)) for p in paths))

    print(f"raw pipeline on {len(images)} real JPEGs ...", flush=True)
    raw = raw_pipeline(args.bundle, images, streams=2, threads=1, duration=args.duration)
    raw_single_thread2 = raw_pipeline(args.bundle, images, streams=1, threads=2, duration=args.duration)

    servers: dict[str, list[dict[str, Any]]] = {}
    base = [sys.executable, "-m", "plantdx.cli", "serve", "--model", str(args.bundle),
            "--set", "serve.log_level=WARNING", "--set", "serve.rate_limit=1000000/minute"]  # fmt: skip
    for name, extra in (("plantdx (batching on)", ["--set", "serve.batching=true"]),
                        ("plantdx (batching off)", ["--set", "serve.batching=false"])):  # fmt: skip
        port = free_port()
        print(f"{name} ...", flush=True)
        servers[name] = bench_server([*base, "--port", str(port), *extra], f"http://127.0.0.1:{port}", script,
                                     args.levels, args.duration, tmp / f"{name[:10]}.log")  # fmt: skip
    port = free_port()
    naive_cmd = [sys.executable, str(HERE / "naive_server.py"), "--bundle", str(args.bundle), "--port", str(port)]
    if args.checkpoint:
        naive_cmd += ["--checkpoint", str(args.checkpoint)]
    print("naive baseline ...", flush=True)
    servers["naive (async route, PyTorch per request)"] = bench_server(
        naive_cmd, f"http://127.0.0.1:{port}", script, args.levels, args.duration, tmp / "naive.log"
    )

    print()
    print(f"raw pipeline: single image p50 {raw['single_p50_ms']:.2f} ms, p99 {raw['single_p99_ms']:.2f} ms; "
          f"throughput {raw['throughput_ips']:.0f} img/s (2 streams x 1 thread), "
          f"{raw_single_thread2['throughput_ips']:.0f} img/s (1 stream x 2 threads)")  # fmt: skip
    print(f"{'server':<42} {'conc':>4} {'req/s':>8} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'non-2xx':>8}")
    for name, results in servers.items():
        for r in results:
            print(f"{name:<42} {r['concurrency']:>4} {r['throughput_rps']:>8.0f} {r['p50_ms']:>8.2f} "
                  f"{r['p90_ms']:>8.2f} {r['p99_ms']:>8.2f} {r['non_2xx']:>8}")  # fmt: skip

    best = max(servers["plantdx (batching on)"] + servers["plantdx (batching off)"], key=lambda r: r["throughput_rps"])
    at32 = {name: next((r for r in res if r["concurrency"] == max(args.levels)), None) for name, res in servers.items()}
    on32, off32, naive32 = (at32[k] for k in servers)
    shipped = on32 if on32["throughput_rps"] >= off32["throughput_rps"] else off32
    c1 = next(r for r in servers["plantdx (batching on)"] if r["concurrency"] == min(args.levels))
    targets = {
        "throughput_vs_raw_at_max_concurrency": shipped["throughput_rps"] / raw["throughput_ips"],
        "throughput_vs_naive_at_max_concurrency": shipped["throughput_rps"] / naive32["throughput_rps"],
        "p50_at_c1_minus_raw_single_ms": c1["p50_ms"] - raw["single_p50_ms"],
        "goals": {"throughput_vs_raw": ">= 0.8", "throughput_vs_naive": ">= 5", "p50_c1_over_raw_ms": "<= 5"},
        "best_server_config": best,
    }
    print()
    print(json.dumps(targets, indent=2))
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "serve.json"
    out.write_text(json.dumps({
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor(), "machine": platform.machine()},
        "bundle": str(args.bundle),
        "images": len(images),
        "duration_s": args.duration,
        "raw_pipeline": {"2x1": raw, "1x2": raw_single_thread2},
        "servers": servers,
        "targets": targets,
    }, indent=2) + "\n")  # fmt: skip
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
