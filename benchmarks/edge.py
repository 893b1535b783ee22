"""The offline page, measured in headless Chromium against a real server: parity, wire sizes, first load, latency.

    python benchmarks/edge.py [BUNDLE] [--photos N] [--throttled N] [--phone N] [--out FILE]

BUNDLE defaults to the packaged one. Its test photos (the split its card was scored on) are diagnosed twice: by
the server (POST /v1/predict) and in the page by the edge model (onnxruntime-web, WASM, one thread), from the
same file bytes. Reported: top-1 agreement, identical abstain decisions, max |dp| over every class, and the share
of photos with the same reason. Then: what the edge model weighs over the wire in each storage format (raw, gzip
as served, brotli for comparison), the first load on loopback (page, runtime and model until the page says it is
ready offline), and the diagnosis latency (model only, and photo to answer) unthrottled and with DevTools' CPU
throttling at 4x. ``--phone N`` also sends N test photos enlarged to a 12-megapixel JPEG, the case where the
service decodes at a reduced DCT scale and the page averages blocks instead.

The machine's load average is recorded: figures taken while something else runs are marked so.
"""

from __future__ import annotations

import argparse
import base64
import gzip
import io
import json
import os
import platform
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from plantdx.bundle import load_bundle
from plantdx.config import load_settings
from plantdx.data.split import manifest_for
from plantdx.edge import REASONS, build_edge_graph, dataset_of, reason_code
from plantdx.inference import default_bundle_path

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "configs" / "default_model_refit.yaml"  # the bundled model's recipe (its split)

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-quic"]  # fmt: skip
BUDGET = 6_000_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(bundle: Path, cwd: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLANTDX_")}
    cmd = [sys.executable, "-m", "plantdx.cli", "serve", "--port", str(port), "--model", str(bundle),
           "--set", "serve.rate_limit=1000000/minute", "--set", "monitor.log_url=null"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=(cwd / "server.log").open("wb"), stderr=subprocess.STDOUT, env=env, cwd=cwd)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError((cwd / "server.log").read_text()[-3000:])


def brotli_size(data: bytes) -> int | None:
    try:
        import brotli  # type: ignore[import-not-found]
    except ImportError:
        return None
    return len(brotli.compress(data, quality=11))


def sizes(bundle: Any) -> dict[str, Any]:
    """The edge model in each storage format, as bytes on disk and on the wire."""
    out: dict[str, Any] = {}
    for weights in ("fp32", "fp16", "int8"):
        data = build_edge_graph(bundle, weights).SerializeToString()
        gz = len(gzip.compress(data, compresslevel=9, mtime=0))
        out[weights] = {"bytes": len(data), "gzip": gz, "brotli": brotli_size(data), "fits_6MB_gzip": gz <= BUDGET}
    return out


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


ENGINE = """async () => {
    if (!window.benchEngine) {
        const m = await import('/static/edge/engine.mjs');
        const e = new m.EdgeEngine(); await e.start();
        window.benchEngine = e;
    }
    return window.benchEngine.model.sha256;
}"""
DIAGNOSE = """async (items) => {
    const out = [];
    for (const [name, b64] of items) {
        const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
        const a = await window.benchEngine.diagnose(new File([bytes], name));
        out.push({prediction: a.prediction, abstained: a.abstained, reason: a.reason, code: a.reason_code,
                  probabilities: a.probabilities, model_ms: a.inference_time_ms, total_ms: a.total_time_ms});
    }
    return out;
}"""


def in_page(page: Any, files: list[tuple[str, bytes]], chunk: int = 40) -> list[dict[str, Any]]:
    answers: list[dict[str, Any]] = []
    for i in range(0, len(files), chunk):
        items = [[name, base64.b64encode(data).decode()] for name, data in files[i : i + chunk]]
        answers += page.evaluate(DIAGNOSE, items)
    return answers


def served(url: str, files: list[tuple[str, bytes]]) -> list[dict[str, Any]]:
    with httpx.Client(base_url=url, timeout=60) as c:
        return [c.post("/v1/predict", files={"file": (n, d)}).json() for n, d in files]


def compare(server: list[dict[str, Any]], page: list[dict[str, Any]]) -> dict[str, Any]:
    n = len(server)
    top1 = sum(s["prediction"] == p["prediction"] for s, p in zip(server, page, strict=True))
    abstain = sum(s["abstained"] == p["abstained"] for s, p in zip(server, page, strict=True))
    reason = sum(reason_code(s["reason"]) == p["code"] for s, p in zip(server, page, strict=True))
    dps = [max(abs(s["probabilities"][k] - p["probabilities"][k]) for k in s["probabilities"])
           for s, p in zip(server, page, strict=True)]  # fmt: skip
    disagree = [
        {"server": s["prediction"], "page": p["prediction"], "server_reason": s["reason"], "page_reason": p["reason"]}
        for s, p in zip(server, page, strict=True)
        if s["prediction"] != p["prediction"] or s["abstained"] != p["abstained"]
    ]
    return {
        "photos": n,
        "top1_agreement": top1 / n,
        "abstain_agreement": abstain / n,
        "reason_agreement": reason / n,
        "max_abs_dp": max(dps),
        "mean_abs_dp": float(np.mean(dps)),
        "server_abstained": sum(s["abstained"] for s in server),
        "page_abstained": sum(p["abstained"] for p in page),
        "reasons_seen": sorted({REASONS[p["code"]] for p in page}),
        "disagreements": disagree[:20],
    }


def latency(answers: list[dict[str, Any]]) -> dict[str, float]:
    model = [a["model_ms"] for a in answers]
    total = [a["total_ms"] for a in answers]
    return {
        "n": len(answers),
        "model_p50_ms": percentile(model, 50),
        "model_p90_ms": percentile(model, 90),
        "photo_to_answer_p50_ms": percentile(total, 50),
        "photo_to_answer_p90_ms": percentile(total, 90),
    }


def phone_jpeg(path: Path) -> bytes:
    """A test photo enlarged to 12 MP (3024 x 4032) and saved as a phone saves it: the DCT-scaled decode case."""
    img = Image.open(path).convert("RGB").resize((3024, 4032), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", nargs="?", type=Path, default=default_bundle_path())
    ap.add_argument("--photos", type=int, default=0, help="test photos to compare (0: all of the split)")
    ap.add_argument("--throttled", type=int, default=100, help="photos timed under 4x CPU throttling")
    ap.add_argument("--phone", type=int, default=20, help="test photos also sent as 12 MP JPEGs")
    ap.add_argument("--out", type=Path, default=None, help="default: benchmarks/results/edge-<architecture>.json")
    ap.add_argument("-c", "--config", type=Path, default=RECIPE, help="the recipe whose split the bundle was scored on")
    args = ap.parse_args()
    from playwright.sync_api import expect, sync_playwright

    bundle = load_bundle(args.bundle.resolve())
    if bundle.edge_path is None:
        sys.exit(f"{args.bundle} has no model.edge.onnx: plantdx export --edge-only {args.bundle}")
    load_before = os.getloadavg()
    dataset = dataset_of(bundle, load_settings(args.config).dataset)
    rows = manifest_for(dataset).split("test")
    if args.photos:
        rows = rows[:: max(1, len(rows) // args.photos)][: args.photos]
    files = [(Path(r.path).name, dataset.locate(r.root, r.path).read_bytes()) for r in rows]
    print(f"{len(files)} test photos of {args.bundle}; measuring sizes", flush=True)
    size_table = sizes(bundle)
    vendor = REPO / "src" / "plantdx" / "serve" / "static" / "vendor" / "onnxruntime-web"
    runtime = {
        p.name: {"bytes": p.stat().st_size, "brotli": (vendor / (p.name + ".br")).stat().st_size,
                 "gzip": (vendor / (p.name + ".gz")).stat().st_size}
        for p in sorted(vendor.glob("*.*")) if p.suffix in (".mjs", ".wasm")
    }  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_server(bundle.path, Path(tmp))
        try:
            info = httpx.get(f"{url}/v1/model", timeout=10).json()
            with (
                httpx.Client(base_url=url, timeout=300) as c,
                c.stream("GET", info["edge"]["url"], headers={"Accept-Encoding": "gzip"}) as r,
            ):
                wire = sum(len(x) for x in r.iter_raw())  # fmt: skip
            print("asking the server", flush=True)
            server = served(url, files)
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
                context = browser.new_context(viewport={"width": 412, "height": 915})
                page = context.new_page()
                started = time.perf_counter()
                page.goto(url + "/")
                dom_ready = time.perf_counter() - started
                expect(page.locator("#edge-info")).to_have_attribute("data-sha256", re.compile(".+"), timeout=120000)
                first_load = time.perf_counter() - started
                page.evaluate(ENGINE)
                print("diagnosing in the page", flush=True)
                in_page(page, files[:5])  # warm-up
                local = in_page(page, files)
                parity = compare(server, local)
                fast = latency(local)
                cdp = context.new_cdp_session(page)
                cdp.send("Emulation.setCPUThrottlingRate", {"rate": 4})
                throttled = latency(in_page(page, files[: args.throttled]))
                cdp.send("Emulation.setCPUThrottlingRate", {"rate": 1})
                phone: dict[str, Any] | None = None
                if args.phone:
                    print("phone-sized JPEGs", flush=True)
                    paths = [dataset.locate(r.root, r.path) for r in rows[:: max(1, len(rows) // args.phone)]]
                    big = [(p.stem + "-12mp.jpg", phone_jpeg(p)) for p in paths[: args.phone]]
                    phone = compare(served(url, big), in_page(page, big, chunk=4))
                    phone["latency"] = latency(in_page(page, big[:5], chunk=1))
                browser.close()
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    load_after = os.getloadavg()
    result = {
        "bundle": str(args.bundle),
        "architecture": bundle.card.get("architecture"),
        "edge_weights": info["edge"]["weights"],
        "edge_sha256": info["edge"]["sha256"],
        "parity": parity,
        "parity_phone_12mp_jpeg": phone,
        "wire": {
            "edge_model_as_served_gzip": wire,
            "edge_model_bytes": info["edge"]["size"],
            "budget": BUDGET,
            "within_budget": wire <= BUDGET,
            "formats": size_table,
            "runtime_onnxruntime_web": runtime,
        },
        "first_load_s": {"dom_content_loaded": round(dom_ready, 3), "ready_offline": round(first_load, 3)},
        "latency": {"unthrottled": fast, "cpu_throttled_4x": throttled},
        "targets": {"top1": 0.995, "abstain": 0.99, "first_load_s": 3.0, "p50_ms": 30.0, "p50_throttled_ms": 100.0},
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "load_average_before": load_before,
            "load_average_after": load_after,
            "busy": max(load_before[0], load_after[0]) > 0.5 * (os.cpu_count() or 1),
        },
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    out = args.out or REPO / "benchmarks" / "results" / f"edge-{result['architecture']}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nedge model of {args.bundle} ({result['architecture']}, {result['edge_weights']} weights)")
    print(f"{'measure':<44}{'value':>14}{'target':>12}")
    rows_out = [
        ("top-1 agreement with the server", f"{parity['top1_agreement']:.4f}", ">= 0.995"),
        ("identical abstain decisions", f"{parity['abstain_agreement']:.4f}", ">= 0.99"),
        ("same reason", f"{parity['reason_agreement']:.4f}", ""),
        ("max |dp| (any class)", f"{parity['max_abs_dp']:.2e}", "reported"),
        (f"photos ({parity['photos']})", str(parity["photos"]), ">= 200"),
        ("edge model over the wire (gzip), bytes", f"{wire:,}", "<= 6,000,000"),
        ("first load until ready offline, s", f"{first_load:.2f}", "<= 3"),
        ("diagnosis p50, model only, ms", f"{fast['model_p50_ms']:.1f}", "<= 30"),
        ("diagnosis p50, photo to answer, ms", f"{fast['photo_to_answer_p50_ms']:.1f}", ""),
        ("4x CPU throttling: p50 model only, ms", f"{throttled['model_p50_ms']:.1f}", "<= 100"),
        ("4x CPU throttling: p50 photo to answer, ms", f"{throttled['photo_to_answer_p50_ms']:.1f}", ""),
    ]
    if phone:
        rows_out.append(("12 MP JPEGs: top-1 / abstain agreement", f"{phone['top1_agreement']:.3f} / "
                         f"{phone['abstain_agreement']:.3f}", ""))  # fmt: skip
    for name, value, target in rows_out:
        print(f"{name:<44}{value:>14}{target:>12}")
    for weights, s in size_table.items():
        print(f"  {weights}: {s['bytes']:,} bytes, gzip {s['gzip']:,}, brotli {s['brotli']}")
    busy = " (MACHINE BUSY: re-measure when quiet)" if result["machine"]["busy"] else ""
    print(f"load average {load_before[0]:.2f} -> {load_after[0]:.2f}{busy}; written to {out}")


if __name__ == "__main__":
    main()
