"""``plantdx bench``: how fast each runtime of one bundle is on this machine.

Single-image latency (p50/p99) and batch throughput for PyTorch eager, TorchScript, ONNX Runtime FP32 and INT8,
all on the same preprocessed inputs and the same thread count.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from plantdx.bundle import Bundle, load_bundle
from plantdx.errors import PlantdxError
from plantdx.inference import create_session


@dataclass(frozen=True)
class RuntimeBench:
    runtime: str
    p50_ms: float | None
    p99_ms: float | None
    batch: int
    throughput_ips: float | None
    note: str = ""


def _time(fn: Callable[[], Any], runs: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return sorted(out)


def _measure(name: str, single: Callable[[], Any], batched: Callable[[], Any], batch: int, runs: int) -> RuntimeBench:
    lat = _time(single, runs, warmup=max(5, runs // 10))
    bt = _time(batched, max(5, runs // 10), warmup=2)
    return RuntimeBench(
        name,
        float(np.percentile(lat, 50)),
        float(np.percentile(lat, 99)),
        batch,
        batch / (float(np.median(bt)) / 1000),
    )


RUNTIMES = ("pytorch-eager", "torchscript", "onnxruntime-fp32", "onnxruntime-int8")


def _no_runtime(_: str) -> None:
    pass


def bench_bundle(
    bundle_dir: Path,
    *,
    threads: int,
    runs: int = 300,
    batch: int = 32,
    checkpoint: Path | None = None,
    on_runtime: Callable[[str], None] = _no_runtime,
) -> list[RuntimeBench]:
    """One row per runtime of ``RUNTIMES``, in that order; ``on_runtime`` hears each as its measuring starts."""
    bundle = load_bundle(bundle_dir)
    size = int(bundle.preprocess["crop"])
    rng = np.random.default_rng(0)
    x1 = rng.standard_normal((1, 3, size, size), dtype=np.float32)
    xb = rng.standard_normal((batch, 3, size, size), dtype=np.float32)
    results: list[RuntimeBench] = []

    if importlib.util.find_spec("torch") is None:  # a serve-only install: ONNX Runtime rows only
        for name in ("pytorch-eager", "torchscript"):
            results.append(RuntimeBench(name, None, None, batch, None, "torch is not installed (the train extra)"))
    else:
        import torch

        results.extend(_torch_rows(torch, bundle, checkpoint, x1, xb, threads, runs, on_runtime))
    for name, path in (("onnxruntime-fp32", bundle.onnx_path), ("onnxruntime-int8", bundle.int8_path)):
        on_runtime(name)
        if path is None:
            reason = bundle.card.get("int8", {}).get("reason", "not in bundle")
            results.append(RuntimeBench(name, None, None, batch, None, f"not in bundle: {reason}"))
            continue
        results.append(_measure_onnx(name, path, threads, x1, xb, runs))
    return results


def _torch_rows(
    torch: Any,
    bundle: Bundle,
    checkpoint: Path | None,
    x1: np.ndarray,
    xb: np.ndarray,
    threads: int,
    runs: int,
    on_runtime: Callable[[str], None],
) -> list[RuntimeBench]:
    torch.set_num_threads(threads)
    batch = len(xb)
    rows = []
    t1, tb = torch.from_numpy(x1), torch.from_numpy(xb)
    on_runtime("pytorch-eager")
    eager = _eager_model(checkpoint, bundle.card)
    if eager is None:
        rows.append(RuntimeBench("pytorch-eager", None, None, batch, None, "no checkpoint given (--checkpoint)"))
    else:
        with torch.inference_mode():
            rows.append(_measure("pytorch-eager", lambda: eager(t1), lambda: eager(tb), batch, runs))
    on_runtime("torchscript")
    ts_path = bundle.path / "model.ts"
    if ts_path.is_file():
        scripted = torch.jit.load(str(ts_path))
        with torch.inference_mode():
            rows.append(_measure("torchscript", lambda: scripted(t1), lambda: scripted(tb), batch, runs))
    else:
        rows.append(RuntimeBench("torchscript", None, None, batch, None, "bundle has no model.ts"))
    return rows


def _measure_onnx(name: str, path: Path, threads: int, x1: np.ndarray, xb: np.ndarray, runs: int) -> RuntimeBench:
    session = create_session(path, threads=threads)
    return _measure(
        name,
        lambda: session.run(["logits"], {"image": x1}),
        lambda: session.run(["logits"], {"image": xb}),
        len(xb),
        runs,
    )


def _eager_model(checkpoint: Path | None, card: dict[str, Any]) -> Any:
    """The checkpoint's network, refused unless it is the bundle's model: another one would put its latency in
    the bundle's table."""
    if checkpoint is None:
        return None
    from plantdx.model import load_checkpoint

    model = load_checkpoint(checkpoint).model.eval()
    n = sum(p.numel() for p in model.parameters())
    if card.get("parameters") is not None and n != card["parameters"]:
        raise PlantdxError(
            f"{checkpoint} is not this bundle's model: {n:,} parameters against the card's {card['parameters']:,} "
            f"({card.get('architecture')}); give the checkpoint the bundle was exported from"
        )
    return model


def write_results(
    results: list[RuntimeBench], bundle_dir: Path, threads: int, out_dir: Path, checkpoint: Path | None = None
) -> Path:
    card = load_bundle(bundle_dir, verify=False).card
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "model_runtimes.json"
    path.write_text(
        json.dumps(
            {
                "bundle": str(bundle_dir),
                "checkpoint": str(checkpoint) if checkpoint is not None else None,  # the eager row's model
                "architecture": card.get("architecture"),
                "input_size": card.get("input_size"),
                "threads": threads,
                "cpu_count": os.cpu_count(),
                "machine": platform.machine(),
                "processor": platform.processor(),
                "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "results": [asdict(r) for r in results],
            },
            indent=2,
        )
        + "\n"
    )
    return path
