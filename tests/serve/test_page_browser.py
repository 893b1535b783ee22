"""The grower's page in a real headless Chromium: upload a real leaf photo, read the diagnosis."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import pytest

from conftest import start_server
from plantdx.config import DatasetConfig
from plantdx.data.split import manifest_for
from plantdx.inference import default_bundle_path

pytestmark = [pytest.mark.slow, pytest.mark.realdata]
CHROMIUM = Path("/usr/bin/chromium")


def test_upload_a_leaf_and_see_the_diagnosis(real_data: Path, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    if not CHROMIUM.exists():  # fail, not skip: .ci/run installs it
        pytest.fail(f"{CHROMIUM} not found: apt-get install chromium")

    test_rows = [
        r for r in manifest_for(DatasetConfig(root=real_data)).split("test") if r.label == "Tomato___Early_blight"
    ]
    photo = real_data / test_rows[0].path
    server = start_server(Path(os.environ.get("PLANTDX_TEST_BUNDLE", default_bundle_path())), tmp_path)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=str(CHROMIUM),
                args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                      "--disable-sync", "--no-first-run", "--disable-quic"],
            )  # fmt: skip
            page = browser.new_page(viewport={"width": 412, "height": 915}, device_scale_factor=1)  # a phone
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(server.url + "/")
            assert page.locator("#photo").get_attribute("capture") == "environment"
            page.set_input_files("#photo", str(photo))
            page.click("#diagnose")
            expect(page.locator("#diagnosis")).not_to_be_empty(timeout=20000)  # no eval: the page's CSP forbids it
            diagnosis = page.locator("#diagnosis").inner_text()
            assert "Early blight" in diagnosis and "Tomato" in diagnosis, diagnosis
            assert "%" in page.locator("#confidence").inner_text()
            assert page.locator("#top3 li").count() == 3
            # The heat map lies over the model's centre crop: the photo is zoomed by resize / crop from /v1/model.
            spec = httpx.get(f"{server.url}/v1/model", timeout=10).json()["preprocess"]
            zoom = f"{spec['resize'] / spec['crop']:.4f}".rstrip("0")
            expect(page.locator("#heatmap-photo")).to_have_css("transform", f"matrix({zoom}, 0, 0, {zoom}, 0, 0)")
            expect(page.locator("#heatmap-photo")).to_have_css("object-fit", "cover")
            assert "extension" in page.locator("#advice").inner_text().lower() or page.locator("#advice a").count() > 0
            page.wait_for_timeout(300)
            shot = tmp_path / "page.png"
            page.screenshot(path=str(shot), full_page=True)
            browser.close()
        assert errors == []
        assert shot.stat().st_size > 10_000
        if out := os.environ.get("PLANTDX_SCREENSHOT_DIR"):
            shutil.copy(shot, Path(out) / "page.png")
    finally:
        server.proc.terminate()
        server.proc.wait(timeout=30)
