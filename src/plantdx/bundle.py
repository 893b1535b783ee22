"""The model bundle: the folder that is exported, registered and served (see DESIGN.md).

Reading and verifying a bundle needs only the standard library: serving, monitoring and outside users load it
without torch. ``card.json`` lists the sha256 of every other file, so a bundle with a missing or altered file is
refused before any of it is used.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from plantdx.digest import sha256_file
from plantdx.errors import PlantdxError

REQUIRED_FILES = ("model.onnx", "labels.json", "preprocess.json", "calibration.json", "reference.json", "card.json")
EDGE_FILE = "model.edge.onnx"  # the in-browser model, post-processing inside (plantdx.edge)
NATIVE_FILE = "model.pte"  # the same network for ExecuTorch (XNNPACK), for a native app
OPTIONAL_FILES = ("model.int8.onnx", "model.ts", EDGE_FILE, NATIVE_FILE)
PREPROCESS_KEYS = ("resize", "crop", "interpolation", "mean", "std", "layout", "input_name", "output_name")


class BundleError(PlantdxError):
    """A bundle folder is incomplete, altered or malformed."""


def file_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every bundle file except the card itself."""
    return {
        p.name: sha256_file(p)
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name != "card.json" and p.name in (*REQUIRED_FILES, *OPTIONAL_FILES)
    }


def write_card(folder: Path, card: dict[str, Any]) -> dict[str, Any]:
    """Write ``card.json`` with the hashes of the files now in ``folder``; call it last."""
    full = {**card, "files": file_hashes(folder)}
    (folder / "card.json").write_text(json.dumps(full, indent=2, sort_keys=False) + "\n")
    return full


@dataclass(frozen=True)
class Bundle:
    path: Path
    labels: list[str]
    preprocess: dict[str, Any]
    calibration: dict[str, Any]
    reference: dict[str, Any]
    card: dict[str, Any]

    @property
    def onnx_path(self) -> Path:
        return self.path / "model.onnx"

    @property
    def version(self) -> str:
        """The name its predictions are logged under when it is served from a folder: the card's version, else one
        derived from the ONNX file's hash. Served through the registry, its version number is used instead."""
        digest = hashlib.sha256(str(self.card.get("files", {}).get("model.onnx", "")).encode()).hexdigest()[:8]
        return str(self.card.get("version") or f"bundle-{digest}")

    @property
    def int8_path(self) -> Path | None:
        candidate = self.path / "model.int8.onnx"
        return candidate if candidate.is_file() else None

    @property
    def edge_path(self) -> Path | None:
        candidate = self.path / EDGE_FILE
        return candidate if candidate.is_file() else None

    @property
    def temperature(self) -> float:
        return float(self.calibration.get("temperature", 1.0))

    @property
    def abstain_threshold(self) -> float:
        return float(self.calibration.get("abstain_threshold", 0.0))


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise BundleError(f"{path.name} in bundle {path.parent} is not valid JSON: {exc}") from None


def load_bundle(path: Path, *, verify: bool = True) -> Bundle:
    """Read a bundle folder; with ``verify`` every file must be present and match the card's sha256."""
    if not path.is_dir():
        raise BundleError(f"bundle folder not found: {path}")
    missing = [name for name in REQUIRED_FILES if not (path / name).is_file()]
    if missing:
        raise BundleError(f"bundle {path} is missing {', '.join(missing)}")
    card = _read_json(path / "card.json")
    if verify:
        recorded = card.get("files")
        if not isinstance(recorded, dict) or not recorded:
            raise BundleError(f"card.json of bundle {path} records no file hashes")
        for name, expected in recorded.items():
            file = path / name
            if not file.is_file():
                raise BundleError(f"bundle {path} is missing {name}, which its card lists")
            actual = sha256_file(file)
            if actual != expected:
                raise BundleError(
                    f"{name} in bundle {path} does not match its card (sha256 {actual[:12]}…, card says "
                    f"{expected[:12]}…): the file was changed or damaged"
                )
        unlisted = [n for n in REQUIRED_FILES if n != "card.json" and n not in recorded]
        if unlisted:
            raise BundleError(f"card.json of bundle {path} does not cover {', '.join(unlisted)}")
        # A model file added after export (an int8 graph, say) would be served unchecked: refuse it too.
        added = [n for n in OPTIONAL_FILES if (path / n).is_file() and n not in recorded]
        if added:
            raise BundleError(f"bundle {path} holds {', '.join(added)}, which its card.json does not list")
    labels = _read_json(path / "labels.json")
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels) or len(labels) < 2:
        raise BundleError(f"labels.json in bundle {path} must be a list of at least two class names")
    preprocess = _read_json(path / "preprocess.json")
    absent = [k for k in PREPROCESS_KEYS if k not in preprocess]
    if absent:
        raise BundleError(f"preprocess.json in bundle {path} lacks {', '.join(absent)}")
    return Bundle(
        path=path,
        labels=labels,
        preprocess=preprocess,
        calibration=_read_json(path / "calibration.json"),
        reference=_read_json(path / "reference.json"),
        card=card,
    )
