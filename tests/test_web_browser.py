"""The web page in a real headless chromium (issue #7): upload, labels, Grad-CAM, CSV, errors.

Needs Debian's chromium at /usr/bin/chromium (``bash scripts/install_browser.sh``; ``make test``
runs it first) and the ``playwright`` Python package; skips with a reason otherwise.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CHROMIUM = "/usr/bin/chromium"
pytestmark = pytest.mark.browser


def _start_server(app):
    from helpers import start_server

    return start_server(app)


@pytest.fixture
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} not found: run `bash scripts/install_browser.sh` (apt, as root) to "
                    "install Debian's chromium for the browser tests")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright Python package is not installed")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"], headless=True)
        try:
            yield b
        finally:
            b.close()


def write_png(path: Path, img: np.ndarray) -> Path:
    Image.fromarray(img).save(path)
    return path


@pytest.mark.timeout(90)
def test_upload_in_browser(browser, fake_run, tmp_path):
    import httpx

    from protloc.web.app import create_app

    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (32, 32, 3)).astype(np.uint8)
    cell = write_png(tmp_path / "cell_A.png", img)
    hpa = [write_png(tmp_path / f"42_{ch}.png", np.ascontiguousarray(img[..., k]))
           for k, ch in enumerate(("red", "green", "blue"))]
    bad = tmp_path / "notes.png"
    bad.write_bytes(b"this is not an image")

    server, thread, url = _start_server(create_app(fake_run))
    try:
        api = httpx.post(f"{url}/predict", files=[("files", ("cell_A.png", cell.read_bytes(), "image/png"))],
                         timeout=30).json()["results"][0]
        want = [lab["id"] for lab in api["labels"]]

        page = browser.new_page(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
        problems = []
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" and " 415 " not in m.text
                else None)  # the 415 of the bad file is expected
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.goto(url + "/")
        page.wait_for_selector("text=validation macro F1", timeout=15000)
        assert "0.30" in page.inner_text("#model-card")
        assert "Nuclear speckles" in page.inner_text("#model-card")

        page.set_input_files("#file-input", [str(cell), *map(str, hpa), str(bad)])
        expect = pytest.importorskip("playwright.sync_api").expect  # polls; no eval under the page's CSP
        expect(page.locator(".result")).to_have_count(3, timeout=15000)
        expect(page.locator('.result[data-status="pending"]')).to_have_count(0, timeout=30000)
        done = page.locator('.result[data-status="done"]')
        assert done.count() == 2
        first = page.locator('.result[data-image="cell_A"]')
        shown = sorted(int(x) for x in first.locator(".chip[data-class-id]").evaluate_all(
            "els => els.map(e => e.dataset.classId)"))
        assert shown == sorted(want)
        assert first.locator(".bar-row").count() == 10 and first.locator(".tick").count() == 10
        assert first.locator(".bar-row.on").count() == len(want)
        assert first.locator(".cams img").count() == len(want)
        assert first.locator(".channels img").count() == 3
        # the HPA set is the same image, so the same labels
        hpa_card = page.locator('.result[data-image="42"]')
        assert sorted(int(x) for x in hpa_card.locator(".chip[data-class-id]").evaluate_all(
            "els => els.map(e => e.dataset.classId)")) == sorted(want)
        err = page.locator('.result[data-status="error"]')
        assert err.count() == 1 and "notes.png" in err.inner_text() and "PNG, JPEG or TIFF" in err.inner_text()
        # all images painted (data URIs decoded)
        assert page.evaluate("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")

        with page.expect_download() as dl:
            page.click("#btn-csv")
        text = Path(dl.value.path()).read_text()
        rows = [line.split(",") for line in text.strip().splitlines()]
        assert rows[0][:3] == ["Image", "Label", "Mitochondria"] and len(rows) == 3
        by_id = {r[0]: r[1] for r in rows[1:]}
        assert by_id["cell_A"] == api["label"] and by_id["42"] == api["label"]

        # drag and drop onto the drop zone (a synthetic DataTransfer, as a file manager makes)
        import base64

        page.evaluate("""(b64) => {
            const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
            const dt = new DataTransfer();
            dt.items.add(new File([bytes], 'dropped.png', {type: 'image/png'}));
            document.getElementById('dropzone').dispatchEvent(
                new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true}));
        }""", base64.b64encode(cell.read_bytes()).decode())
        expect(page.locator('.result[data-image="dropped"][data-status="done"]')).to_have_count(1, timeout=30000)
        assert "3 analysed" in page.inner_text("#count")

        page.screenshot(path=str(tmp_path / "web.png"), full_page=True)
        assert (tmp_path / "web.png").stat().st_size > 10_000
        if os.environ.get("PROTLOC_SCREENSHOT"):
            page.screenshot(path=os.environ["PROTLOC_SCREENSHOT"], full_page=True)
        assert not problems, problems
        page.click("#btn-clear")
        expect(page.locator(".result")).to_have_count(0)
        assert page.is_disabled("#btn-csv")
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.mark.timeout(90)
def test_16bit_ome_tiff_and_ood_warning_in_browser(browser, trained_run, tmp_path):
    """A 16-bit OME-TIFF of a training image is read by the run's rule (the page says which, and
    its pixel size); a noise image gets the out-of-distribution warning, the training image none."""
    import tifffile

    from protloc.core.runfolder import RunFolder
    from protloc.web.app import create_app

    train = sorted(Path(RunFolder(trained_run).data_source().images).glob("*.png"))[0]
    img = np.asarray(Image.open(train).convert("RGB"))
    ome = tmp_path / "cell.ome.tif"
    tifffile.imwrite(ome, np.moveaxis(img.astype(np.uint16) * 257, -1, 0), ome=True,
                     metadata={"axes": "CYX", "PhysicalSizeX": 0.25, "PhysicalSizeY": 0.25})
    noise = write_png(tmp_path / "noise.png", np.random.default_rng(1).integers(0, 256, img.shape).astype(np.uint8))

    server, thread, url = _start_server(create_app(trained_run))
    try:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        problems = []
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.goto(url + "/")
        page.wait_for_selector("text=validation macro F1", timeout=15000)
        card = page.inner_text("#model-card")
        assert "scale: 8-bit data as stored" in card and "unusual images" in card
        page.set_input_files("#file-input", [str(ome), str(noise)])
        expect = pytest.importorskip("playwright.sync_api").expect
        expect(page.locator('.result[data-status="done"]')).to_have_count(2, timeout=30000)
        tif = page.locator('.result[data-image="cell.ome"]')
        facts = tif.locator(".input-facts").inner_text()
        assert "intensity: scale 16-bit (x / 257.00)" in facts and "pixel size: 0.25 µm/px (OME" in facts
        assert tif.locator(".ood-warning").count() == 0
        warn = page.locator('.result[data-image="noise"] .ood-warning')
        expect(warn).to_have_count(1)
        assert "unlike the training images" in warn.inner_text()
        assert page.locator('.result[data-ood="flagged"]').count() == 1
        if os.environ.get("PROTLOC_SCREENSHOT_OOD"):
            page.screenshot(path=os.environ["PROTLOC_SCREENSHOT_OOD"], full_page=True)
        assert not problems, problems
    finally:
        server.should_exit = True
        thread.join(timeout=10)
