"""The package's shape: imports follow the data, and the light entry points stay light.

Stages, in the order the data flows: data -> model -> train -> evaluate -> registry -> export -> inference -> serve
-> monitor. A module may import its own stage, an earlier one and the shared foundation, never a later stage; the
one exception is export -> inference, on purpose (a bundle's card is measured on the serving path). Lazy imports
inside functions count too.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import plantdx

PACKAGE = Path(plantdx.__file__).parent
STAGES = ("data", "model", "train", "evaluate", "registry", "export", "inference", "serve", "monitor")
# Shared by every stage; they import nothing from a stage.
FOUNDATION = {"config", "errors", "digest", "images", "scores", "tracking", "bundle", "profile", "ood", "__init__"}
STAGE_OF = {
    "weights": "model",
    "checkpoints": "train",
    "bench": "inference",
    "corruptions": "inference",
    "edge": "export",  # the page's offline model, built beside the bundle's other graphs
    "native": "export",  # the ExecuTorch program
}
TOP = {"cli", "retrain", "federate"}  # the shells around the stages: they may import any of them
ALLOWED = {("export", "inference")}


def _unit(module: str) -> str:
    """``plantdx.serve.engine`` -> ``serve``; ``plantdx.train`` -> ``train``."""
    return module.split(".")[1] if module.count(".") else "__init__"


def _stage(unit: str) -> str | None:
    return unit if unit in STAGES else STAGE_OF.get(unit)


def _imports() -> list[tuple[str, str, int]]:
    """(importing file, imported plantdx module, line) for every import statement, lazy ones included."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(("plantdx", *path.relative_to(PACKAGE).with_suffix("").parts))
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("plantdx."):
                targets = [node.module] if node.module.count(".") else [f"plantdx.{a.name}" for a in node.names]
                found += [(name, t, node.lineno) for t in targets]
            elif isinstance(node, ast.ImportFrom) and node.module == "plantdx":
                found += [(name, f"plantdx.{a.name}", node.lineno) for a in node.names]
            elif isinstance(node, ast.Import):
                found += [(name, a.name, node.lineno) for a in node.names if a.name.startswith("plantdx.")]
    return found


def test_every_module_has_a_place() -> None:
    units = {_unit(".".join(("plantdx", *p.relative_to(PACKAGE).with_suffix("").parts))) for p in PACKAGE.rglob("*.py")}
    unplaced = sorted(u for u in units if _stage(u) is None and u not in FOUNDATION | TOP)
    assert not unplaced, f"modules with no stage: {unplaced}"


def test_imports_follow_the_data() -> None:
    wrong = []
    for source, target, line in _imports():
        a, b = _unit(source), _unit(target)
        if a == b or a in TOP:
            continue
        if a in FOUNDATION:
            if b not in FOUNDATION:
                wrong.append(f"{source}:{line} (foundation) imports {target} ({_stage(b)})")
            continue
        sa, sb = _stage(a), _stage(b)
        if b in TOP or (sb is not None and sa is not None and STAGES.index(sb) > STAGES.index(sa)):
            if (sa, sb) not in ALLOWED:
                wrong.append(f"{source}:{line} ({sa}) imports {target} ({sb or b}), a later stage")
    assert not wrong, "\n".join(wrong)


def _loaded_after(code: str) -> set[str]:
    probe = f"{code}\nimport sys\nprint(' '.join(sorted(m.split('.')[0] for m in sys.modules)))"
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return set(proc.stdout.split())


def test_a_bundle_is_read_with_the_standard_library() -> None:
    """DESIGN: a bundle is usable with onnxruntime, numpy and PIL; reading and verifying one needs none of them."""
    bundle = str(PACKAGE / "default_bundle")
    loaded = _loaded_after(f"import plantdx.bundle\nplantdx.bundle.load_bundle(plantdx.bundle.Path({bundle!r}))")
    heavy = loaded & {"pydantic", "yaml", "PIL", "numpy", "torch"}
    assert not heavy, sorted(heavy)


@pytest.mark.slow
def test_register_loads_no_torch_or_lightning(tmp_path: Path) -> None:
    """``plantdx register`` only logs files and tags a version: torch and Lightning would cost it seconds."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = (
        "from typer.testing import CliRunner\nfrom plantdx.cli import app\n"
        f"r = CliRunner().invoke(app, ['register', {str(PACKAGE / 'default_bundle')!r}, '--set', "
        f"'tracking.uri={uri}', '--set', 'tracking.artifact_location={tmp_path / 'art'}'])\n"
        "assert r.exit_code == 0, r.output"
    )
    loaded = _loaded_after(code)
    assert "mlflow" in loaded  # it did register
    assert not loaded & {"torch", "lightning", "timm", "torchvision"}, sorted(loaded & {"torch", "lightning"})
