"""What the prediction log costs a request: p50/p99 of /v1/predict with the log on and off, same server settings.

Sequential requests of real leaf photos to a real `plantdx serve` on loopback (the bundled model). The issue's
budget: the p50 may grow by at most 1 ms. Prints a table and writes benchmarks/results/monitor_overhead.json.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("PLANTDX_DATA", REPO.parent / "shared" / "data" / "plantvillage"))
N = int(os.environ.get("N", "400"))


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(log_url: str, photos: list[bytes], workdir: Path) -> dict[str, float]:
    port = _port()
    cmd = [sys.executable, "-m", "plantdx.cli", "serve", "--port", str(port), "--set", f"monitor.log_url={log_url}",
           "--set", "serve.rate_limit=1000000/minute", "--set", "monitor.verdict_poll_s=0",
           "--set", "serve.log_level=WARNING"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(timeout=10) as client:
            for _ in range(300):
                try:
                    if client.get(f"{url}/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.2)
            for p in photos[:50]:  # warm-up
                client.post(f"{url}/v1/predict", files={"file": ("a.jpg", p, "image/jpeg")})
            times = []
            for i in range(N):
                started = time.perf_counter()
                r = client.post(f"{url}/v1/predict", files={"file": ("a.jpg", photos[i % len(photos)], "image/jpeg")})
                times.append((time.perf_counter() - started) * 1000)
                assert r.status_code == 200, r.text
    finally:
        proc.terminate()
        proc.wait(30)
    q = statistics.quantiles(times, n=100)
    return {"p50_ms": statistics.median(times), "p99_ms": q[98], "requests": N}


def main() -> None:
    photos = [p.read_bytes() for p in sorted(DATA.glob("*/*.jpg"))[::40][:100]]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        off = run("null", photos, work)
        on = run(f"sqlite:///{work}/predictions.db", photos, work)
        off2 = run("null", photos, work)  # again, to see the run-to-run noise
    rows = {"log off": off, "log on (SQLite, every prediction + photo)": on, "log off (again)": off2}
    print(f"{'':45s} {'p50 ms':>8s} {'p99 ms':>8s}")
    for name, r in rows.items():
        print(f"{name:45s} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f}")
    delta = on["p50_ms"] - (off["p50_ms"] + off2["p50_ms"]) / 2
    print(f"p50 cost of the log: {delta:+.2f} ms (budget +1 ms)")
    out = REPO / "benchmarks" / "results" / "monitor_overhead.json"
    out.write_text(
        json.dumps({"runs": rows, "p50_delta_ms": delta, "budget_ms": 1.0, "cpu_count": os.cpu_count()}, indent=2)
        + "\n"
    )


if __name__ == "__main__":
    main()
