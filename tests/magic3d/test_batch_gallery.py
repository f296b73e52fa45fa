"""index.html: running jobs shown as running, and opened in headless Chromium every done asset's
preview loads and links resolve."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from magic3d.batch import BatchOptions, run_batch
from magic3d.batch.report import Reporter

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


@pytest.fixture()
def fakes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAGIC3D_BATCH_JOB", "batch_fakes:fake_job")
    monkeypatch.setenv("MAGIC3D_BATCH_PLAN", "batch_fakes:fake_plan")
    monkeypatch.setenv("FAKE_STEP_S", "0.01")


def test_the_gallery_shows_a_running_job_as_running(tmp_path: Path, fakes: None) -> None:
    out = tmp_path / "out"
    seen: list[str] = []

    class Watcher(Reporter):
        def emit(self, event: str, **fields) -> None:
            super().emit(event, **fields)
            if event == "job_progress":
                page = (out / "index.html").read_text()
                running = re.findall(r'<figure id="([^"]+)" data-state="running"', page)
                seen.append(",".join(running))

    f = tmp_path / "p.txt"
    f.write_text("a red cube\na blue ball\n")
    run_batch(f, BatchOptions(out=out), Watcher(quiet=True))
    assert seen and set(seen) == {"a-red-cube", "a-blue-ball"}  # one worker: one job at a time


def test_an_interrupt_a_library_swallows_still_stops_the_batch(tmp_path: Path, fakes: None) -> None:
    # trimesh's optional imports catch BaseException; the batch process first imports trimesh when
    # it publishes, so a SIGTERM landing there used to be lost and the batch ran to the end.
    class Swallower(Reporter):
        def emit(self, event: str, **fields) -> None:
            super().emit(event, **fields)
            if event == "job_start":
                try:
                    os.kill(os.getpid(), signal.SIGTERM)
                    signal.sigtimedwait([], 0.05)  # let the handler run here
                except BaseException:  # noqa: BLE001 - what the library does
                    pass

    f = tmp_path / "p.txt"
    f.write_text("a red cube\na blue ball\n")
    with pytest.raises(KeyboardInterrupt):
        run_batch(f, BatchOptions(out=tmp_path / "out"), Swallower(quiet=True))
    assert not (tmp_path / "out" / "a-blue-ball").exists()  # stopped before the second job


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
