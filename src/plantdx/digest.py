"""Content hashes: what a bundle's card, a manifest and the feedback photos are checked and deduplicated by.

Standard library only, so reading a bundle needs nothing beyond what serving already has.
"""

from __future__ import annotations

import hashlib
from pathlib import Path


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
