"""index.html: running jobs shown as running, and opened in headless Chromium every done asset's
preview loads and links resolve."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from pathlib import Path
from urllib.parse import unquote

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
def test_gallery_cards_and_links_in_headless_chromium(gallery: Path) -> None:
    dom = browse("--dump-dom", gallery.as_uri()).stdout
    figures = dict(re.findall(r'<figure id="([^"]+)" data-state="[a-z]+"[^>]*>(.*?)</figure>', dom))
    assert set(figures) == {"a-red-cube", "a-blue-ball", "please-fail"}
    for job in ("a-red-cube", "a-blue-ball"):  # a viewer with the preview as poster and the GLB as script
        viewer = re.search(r'<model-viewer ([^>]*)>', figures[job]).group(1)
        attrs = dict(re.findall(r'([a-z-]+)="([^"]*)"', viewer))
        for key in ("poster", "data-glb", "data-inline"):
            assert (gallery.parent / unquote(attrs[key])).is_file(), (job, key)
    assert "<model-viewer" not in figures["please-fail"]  # nothing to view for a failed job
    hrefs = re.findall(r'<a href="([^"]+)" class="(?:usdc|glb)"', dom)
    assert len(hrefs) == 4
    for href in hrefs:
        assert (gallery.parent / unquote(href)).is_file(), href


def run_gallery(*args: str) -> tuple[int, str, str]:
    import contextlib
    import io

    import typer

    from magic3d.batch.gallery_cli import register
    from magic3d.console import run_app

    app = typer.Typer()
    register(app)
    app.callback()(lambda: None)  # a group, as in magic3d.cli
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), pytest.raises(SystemExit) as code:
        run_app(app, ["gallery", *args])
    return code.value.code, out.getvalue(), err.getvalue()


def test_gallery_command_republishes_and_refuses_bad_input(gallery: Path, tmp_path: Path) -> None:
    import socket

    folder = gallery.parent
    for name in ("index.html", "world.html", "_gallery/a-red-cube.glb.js", "_gallery/model-viewer-umd.min.js"):
        (folder / name).unlink()
    code, out, _ = run_gallery(str(folder))
    assert code == 0 and out.strip() == f"gallery: {folder / 'index.html'}"
    assert (folder / "_gallery" / "a-red-cube.glb.js").read_text().startswith('magic3dGlb("a-red-cube", "')
    assert "a-blue-ball" in (folder / "world.html").read_text()
    (tmp_path / "plain").mkdir()
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    busy = str(taken.getsockname()[1])
    for args, words in [((str(tmp_path / "nope"),), "not a folder"), ((str(tmp_path / "plain"),), "batch.sqlite"),
                        ((str(folder), "--serve", "--port", "70000"), "--port"),
                        ((str(folder), "--serve", "--port", busy), "Cannot serve")]:
        code, _, err = run_gallery(*args)
        assert code == 2 and err.startswith("error: ") and words in err and err.count("\n") == 1, (args, err)
    taken.close()
