"""docs/deploy.md: the files it names exist, and its commands use the repository's real paths and settings."""

from __future__ import annotations

import re

from conftest import REPO
from plantdx.config import Settings

DOC = REPO / "docs" / "deploy.md"


def test_every_repository_path_in_the_guide_exists() -> None:
    text = DOC.read_text()
    paths = set(re.findall(r"(?<![\w/.])((?:deploy|configs|tests|benchmarks|src|\.github)/[\w./-]*[\w])", text))
    assert len(paths) > 15
    for path in sorted(paths):
        if "{" in path or "<" in path or "$" in path:
            continue
        assert (REPO / path).exists(), f"docs/deploy.md names {path}, which does not exist"
    for env in ("development", "staging", "production"):
        assert f"deploy/k8s/overlays/{env}" in text or "deploy/k8s/overlays/{development,staging,production}" in text


def test_every_setting_the_guide_names_is_a_real_setting() -> None:
    names = set(re.findall(r"PLANTDX_([A-Z]+)__([A-Z_]+)", DOC.read_text()))
    assert len(names) > 10
    sections = Settings.model_fields
    for section, key in names:
        assert section.lower() in sections, section
        fields = sections[section.lower()].annotation.model_fields  # type: ignore[union-attr]
        assert key.lower() in fields, f"PLANTDX_{section}__{key}"
