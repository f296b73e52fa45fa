"""The 3D gallery in headless Chromium, opened from file:// with the network off: every card's
<model-viewer> loads its GLB (a real textured box) with no console error and draws it, and
world.html shows every asset."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from magic3d.batch import BatchOptions, run_batch

CHROMIUM = next((shutil.which(b) for b in ("chromium", "chromium-browser") if shutil.which(b)), None)
try:
    from playwright.sync_api import sync_playwright
except ImportError:
    sync_playwright = None
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="no Chromium here (Debian: apt-get install chromium)"),
    pytest.mark.skipif(sync_playwright is None, reason="no playwright (pip install -e .[dev])"),
]
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--use-angle=swiftshader", "--enable-unsafe-swiftshader"]
COLOURS = {"a-red-cube": (220, 40, 30), "a-blue-ball": (30, 60, 220)}


def textured_box(colour: tuple[int, int, int]) -> bytes:
    import trimesh
    from PIL import Image

    from exporters.gltf import glb_bytes

    box = trimesh.creation.box(extents=(1.0, 1.0, 1.0))
    texels = np.zeros((8, 8, 3), np.uint8)
    texels[:] = colour
    texels[::2, ::2] = 255  # a checker, so the texture shows
    uv = (box.vertices[:, :2] + 0.5).clip(0, 1)
    box.visual = trimesh.visual.TextureVisuals(uv=uv, image=Image.fromarray(texels))
    return glb_bytes(box)


@pytest.fixture(scope="module")
def gallery(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from magic3d.batch.gallery_cli import republish

    mp = pytest.MonkeyPatch()
    mp.setenv("MAGIC3D_BATCH_JOB", "batch_fakes:fake_job")
    mp.setenv("MAGIC3D_BATCH_PLAN", "batch_fakes:fake_plan")
    mp.setenv("FAKE_STEP_S", "0.01")
    root = tmp_path_factory.mktemp("gallery")
    (root / "p.txt").write_text("a red cube\na blue ball\nplease fail\n")
    out = root / "my out"
    run_batch(root / "p.txt", BatchOptions(out=out, retries=0))
    mp.undo()
    for job, colour in COLOURS.items():  # the fakes' GLBs hold no mesh: put real ones in their place
        (out / job / "asset.glb").write_bytes(textured_box(colour))
    republish(out)
    return out


def open_offline(page_path: Path, shots: Path) -> tuple[dict[str, str], list[str], dict[str, float]]:
    """Each viewer's status, the console errors, and each viewer's screenshot pixel spread."""
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        context = browser.new_context(offline=True, viewport={"width": 900, "height": 900})
        page = context.new_page()
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(page_path.as_uri())
        page.wait_for_function(
            "[...document.querySelectorAll('model-viewer')].every(m => m.dataset.status)", timeout=60_000)
        status = page.evaluate(
            "Object.fromEntries([...document.querySelectorAll('model-viewer')].map(m => [m.dataset.job, m.dataset.status]))")
        spread = {}
        for job in status:
            mv = page.locator(f'model-viewer[data-job="{job}"]')
            mv.scroll_into_view_if_needed()
            page.wait_for_timeout(500)  # a frame after load
            mv.screenshot(path=str(shots / f"{job}.png"))
            spread[job] = float(np.asarray(_load(shots / f"{job}.png")).std(axis=(0, 1)).mean())
        browser.close()
    return status, errors, spread


def _load(path: Path):
    from PIL import Image

    return Image.open(path).convert("RGB")


def test_every_card_turns_its_glb_offline_from_file(gallery: Path, tmp_path: Path) -> None:
    status, errors, spread = open_offline(gallery / "index.html", tmp_path)
    assert status == {"a-red-cube": "loaded", "a-blue-ball": "loaded"}  # the failed job has no viewer
    assert errors == []
    for job, s in spread.items():
        assert s > 8.0, (job, s)  # a flat background alone has a spread near 0
    red = np.asarray(_load(tmp_path / "a-red-cube.png")).reshape(-1, 3).astype(int)
    assert ((red[:, 0] - red[:, 2]) > 60).mean() > 0.01  # the red texture is drawn, not a grey box


def test_the_world_page_shows_every_asset(gallery: Path, tmp_path: Path) -> None:
    status, errors, spread = open_offline(gallery / "world.html", tmp_path)
    assert status == {"a-red-cube": "loaded", "a-blue-ball": "loaded"}
    assert errors == [] and all(s > 8.0 for s in spread.values()), spread
