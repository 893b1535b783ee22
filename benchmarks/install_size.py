"""Install size of plantdx's wheel with its serving extras (issue 23: ``pip install plantdx[serve]`` <= 500 MB).

    PYTHONPATH=src .venv/bin/python benchmarks/install_size.py [--extras serve serve,monitor] [--wheel PATH]

Builds the wheel from this checkout as the serve image does (``python -m build --wheel`` on a copy of the sources),
then for each extras set makes a fresh venv, ``pip install``s the wheel with them, and reports what the install
added: the venv's size less an empty venv's (pip and setuptools), and each distribution's share (its RECORD).
MB are 10^6 bytes of file size; ``du_mib`` is the disk usage ``du -sm`` would show. Prints a table and writes
``benchmarks/results/install_size.json``. A benchmark, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
TARGET_MB = {"serve": 500.0}
HEAVY = ["torch", "lightning", "torchvision", "timm", "evidently", "pandas", "scipy", "pyarrow", "plotly"]
# Run inside the measured venv: each installed distribution's size from the files its RECORD lists.
PROBE = """
import importlib.metadata as m, json, os
sizes = {}
for dist in m.distributions():
    total = 0
    for f in dist.files or []:
        try:
            total += os.stat(dist.locate_file(f)).st_size
        except OSError:
            pass
    sizes[dist.metadata["Name"]] = total
print(json.dumps(sizes))
"""


def clean_env(tmp: Path) -> dict[str, str]:
    """No PYTHONPATH, venv or plantdx settings from the shell. pip's own cache is used: it changes how long an
    install takes, not what it installs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PLANTDX_", "PYTHON", "VIRTUAL_ENV"))}
    return env | {"PIP_DISABLE_PIP_VERSION_CHECK": "1", "DO_NOT_TRACK": "1", "TMPDIR": str(tmp)}


def run(cmd: list[str], env: dict[str, str], timeout: float = 1800) -> str:
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if out.returncode != 0:
        noise = ("WARNING: Location", "is ignored")
        text = "\n".join(line for line in (out.stdout + out.stderr).splitlines() if not line.startswith(noise))
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed:\n{text[-3000:]}")
    return out.stdout


def build_wheel(tmp: Path, env: dict[str, str]) -> Path:
    """``python -m build --wheel`` on a copy of the sources (the checkout gets no build/ or egg-info)."""
    src = tmp / "src-copy"
    shutil.copytree(REPO / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    run([sys.executable, "-m", "build", "--wheel", "--outdir", str(tmp / "dist"), str(src)], env)
    (wheel,) = (tmp / "dist").glob("plantdx-*.whl")
    return wheel


def tree_size(folder: Path) -> tuple[int, int]:
    """(bytes of file size, bytes of disk blocks) under ``folder``, links not followed."""
    size = blocks = 0
    for root, _, files in os.walk(folder):
        for name in files:
            st = os.lstat(os.path.join(root, name))
            size += st.st_size
            blocks += st.st_blocks * 512
    return size, blocks


def make_venv(folder: Path, env: dict[str, str]) -> Path:
    run([sys.executable, "-m", "venv", str(folder)], env, 300)
    return folder / "bin" / "python"


def distribution_sizes(python: Path, env: dict[str, str]) -> dict[str, int]:
    return dict(json.loads(run([str(python), "-c", PROBE], env, 300)))


def measure(
    wheel: Path, extras: str, tmp: Path, env: dict[str, str], empty: tuple[int, int], baseline: set[str]
) -> dict[str, Any]:
    venv = tmp / f"venv-{extras.replace(',', '-') or 'base'}"
    python = make_venv(venv, env)
    started = time.monotonic()
    run([str(python), "-m", "pip", "install", "-q", f"{wheel}[{extras}]" if extras else str(wheel)], env)
    took = time.monotonic() - started
    size, blocks = tree_size(venv)
    sizes = {name: b for name, b in distribution_sizes(python, env).items() if name not in baseline}
    packages = {name: round(b / 1e6, 1) for name, b in sorted(sizes.items(), key=lambda kv: -kv[1])}
    return {
        "extras": extras,
        "installed_mb": round((size - empty[0]) / 1e6, 1),
        "venv_mb": round(size / 1e6, 1),
        "du_mib": round(blocks / 2**20, 1),
        "installed_du_mib": round((blocks - empty[1]) / 2**20, 1),
        "distributions": len(packages),
        "packages_mb": packages,
        "heavy_present": [name for name in HEAVY if name in {k.lower() for k in sizes}],
        "pip_install_s": round(took, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--extras", nargs="+", default=["serve", "serve,monitor"], help="'' for the base install")
    parser.add_argument("--wheel", type=Path, help="a built wheel (default: build one from this checkout)")
    parser.add_argument("--top", type=int, default=12, help="distributions to list per install")
    parser.add_argument("--out", type=Path, default=RESULTS / "install_size.json")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="plantdx-install-size-"))
    try:
        env = clean_env(tmp)
        print("building the wheel ..." if args.wheel is None else f"wheel {args.wheel}", flush=True)
        wheel = args.wheel.resolve() if args.wheel else build_wheel(tmp, env)
        wheel_info = {"name": wheel.name, "mb": round(wheel.stat().st_size / 1e6, 2)}
        empty_python = make_venv(tmp / "venv-empty", env)
        empty = tree_size(tmp / "venv-empty")
        baseline = set(distribution_sizes(empty_python, env))  # pip (and setuptools): in every venv, not added
        results = []
        for extras in args.extras:
            print(f"pip install plantdx[{extras}] into a fresh venv ...", flush=True)
            results.append(measure(wheel, extras, tmp, env, empty, baseline))
            shutil.rmtree(tmp / f"venv-{extras.replace(',', '-') or 'base'}", ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print()
    print(f"{'install':<28} {'MB added':>9} {'du MiB':>8} {'dists':>6}  target")
    for r in results:
        target = TARGET_MB.get(r["extras"])
        verdict = "" if target is None else f"<= {target:.0f} MB: {'met' if r['installed_mb'] <= target else 'MISSED'}"
        label = f"plantdx[{r['extras']}]" if r["extras"] else "plantdx"
        print(f"{label:<28} {r['installed_mb']:>9.1f} {r['installed_du_mib']:>8.1f} "
              f"{r['distributions']:>6}  {verdict}")  # fmt: skip
        top = list(r["packages_mb"].items())[: args.top]
        print("    largest: " + ", ".join(f"{name} {mb:g}" for name, mb in top))
        if r["heavy_present"]:
            print(f"    heavy: {', '.join(r['heavy_present'])}")
    report = {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "platform": sys.platform,
        "wheel": wheel_info,
        "empty_venv_mb": round(empty[0] / 1e6, 1),
        "empty_venv_distributions": sorted(baseline),
        "targets_mb": TARGET_MB,
        "installs": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
