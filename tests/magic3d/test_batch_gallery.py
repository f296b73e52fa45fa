"""index.html opened in headless Chromium: every done asset's preview loads, links resolve."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from magic3d.batch import BatchOptions, run_batch

BROWSERS = ("chromium", "chromium-headless-shell", "chromium-browser", "google-chrome", "chrome")
BROWSER = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)
needs_browser = pytest.mark.skipif(
    BROWSER is None, reason="no headless Chromium here (Debian: apt-get install chromium-headless-shell)"
)


@pytest.fixture()
def gallery(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MAGIC3D_BATCH_JOB", "batch_fakes:fake_job")
    monkeypatch.setenv("MAGIC3D_BATCH_PLAN", "batch_fakes:fake_plan")
    monkeypatch.setenv("FAKE_STEP_S", "0.01")
    f = tmp_path / "p.txt"
    f.write_text("a red cube\na blue ball\nplease fail\n")
    summary = run_batch(f, BatchOptions(out=tmp_path / "my out", retries=0))  # a space, to test link quoting
    return summary.gallery


def browse(*args: str) -> subprocess.CompletedProcess:
    cmd = [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90)


@needs_browser
def test_gallery_previews_load_in_headless_chromium(gallery: Path) -> None:
    dom = browse("--dump-dom", gallery.as_uri()).stdout
    figures = dict(re.findall(r'<figure id="([^"]+)" data-state="[a-z]+"([^>]*)>', dom))
    assert set(figures) == {"a-red-cube", "a-blue-ball", "please-fail"}
    assert 'data-img="ok"' in figures["a-red-cube"] and 'data-img="ok"' in figures["a-blue-ball"]
    assert "data-img" not in figures["please-fail"]  # no preview for a failed job
    hrefs = re.findall(r'<a href="([^"]+)" class="(?:usdc|glb)"', dom)
    assert len(hrefs) == 4
    for href in hrefs:
        assert (gallery.parent / href).is_file(), href


@needs_browser
def test_gallery_screenshot_shows_the_previews(gallery: Path, tmp_path: Path) -> None:
    from PIL import Image

    shot = tmp_path / "shot.png"
    browse(f"--screenshot={shot}", "--window-size=900,600", gallery.as_uri())
    img = Image.open(shot).convert("RGB")
    assert img.size == (900, 600)
    colours = img.getcolors(maxcolors=1 << 20)
    # the fake previews are flat colours: each should cover a large patch of the page
    big = [c for n, c in colours if n > 20000]
    assert len(big) >= 3, big  # page background plus two previews
