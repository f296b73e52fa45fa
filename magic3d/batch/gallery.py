"""A batch folder's front pages: ``index.html`` (a card per job, each done asset in an
interactive 3D viewer), ``world.html`` (every asset at once) and ``world.usda``.

Both are rebuilt from the manifest as jobs finish, written to a temporary name and renamed, and
under a file lock so two batch processes on one folder never interleave their rewrites.
"""

from __future__ import annotations

import contextlib
import html
import json
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import magic3d.batch.viewer as viewer
from magic3d.batch.manifest import Job
from magic3d.storage import atomic_write_text

GALLERY_NAME = "index.html"
WORLD_NAME = "world.usda"
WORLD_PAGE = "world.html"
LOCK_NAME = ".batch-publish.lock"
_LINKS = (("usdz", "USDZ"), ("usdc", "USD"), ("usda", "USDA"), ("usd", "USD"), ("glb", "GLB"), ("obj", "OBJ"))
_PREVIEW_KEYS = ("preview", "preview_gif", "preview_png", "gif", "png")

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem; background: #fafafa; color: #222; }
h1 { font-size: 1.4rem; } .summary { color: #555; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(220px, 1fr)); gap: 1rem; }
figure { margin: 0; background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: .6rem; }
figure { position: relative; }
figure img { width: 100%; aspect-ratio: 1; object-fit: contain; background: #eee; }
figure .missing { width: 100%; aspect-ratio: 1; display: grid; place-items: center; background: #eee; color: #888; }
figcaption .prompt { font-weight: 600; } figcaption .meta { color: #666; font-size: .85rem; }
figure[data-state="failed"] { border-color: #c33; } .error { color: #c33; font-size: .85rem; }
a { margin-right: .5rem; }
"""
# Lets a headless browser (and a person with devtools) see which previews actually loaded.
_SCRIPT = """
window.addEventListener('load', () => {
  for (const fig of document.querySelectorAll('figure')) {
    const img = fig.querySelector('img');
    if (img) fig.dataset.img = img.complete && img.naturalWidth > 0 ? 'ok' : 'broken';
  }
});
"""


def _href(path: str) -> str:
    return quote(Path(path).as_posix())


def _run_record(out: Path, job: Job) -> dict[str, Any]:
    try:
        return json.loads((out / job.id / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _card(out: Path, job: Job) -> str:
    esc = html.escape
    record = _run_record(out, job) if job.state == "done" else {}
    seed = job.seed if job.seed is not None else job.metrics.get("seed", record.get("seed", "default"))
    preview = next((job.outputs[k] for k in _PREVIEW_KEYS if k in job.outputs), None)
    model = viewer.viewer_tag(out, job, preview)
    if model:
        image = model
    elif preview:
        image = f'<img src="{_href(preview)}" alt="{esc(job.prompt, quote=True)}" loading="lazy">'
    else:
        image = f'<div class="missing">{esc(job.state)}</div>'
    meta = [f"seed {esc(str(seed))}"]
    if job.source is not None:
        meta.append(esc(job.source.describe()))
    if job.state == "done" and job.duration is not None:
        meta.append(f"{job.duration:.1f} s")
    timings = record.get("timings") or {}
    if timings:
        meta.append(", ".join(f"{esc(str(k))} {float(v):.1f} s" for k, v in timings.items()))
    links = []
    seen_usd = False
    for key, label in _LINKS:
        if key in job.outputs and not (label == "USD" and seen_usd):
            links.append(f'<a href="{_href(job.outputs[key])}" class="{key}">{label}</a>')
            seen_usd |= label == "USD"
    if (out / job.id / "batch.log").is_file():
        links.append(f'<a href="{_href(f"{job.id}/batch.log")}" class="log">log</a>')
    error = f'<div class="error">{esc(job.error or "")}</div>' if job.state == "failed" else ""
    return (
        f'<figure id="{esc(job.id, quote=True)}" data-state="{job.state}">{image}<figcaption>'
        f'<div class="prompt">{esc(job.prompt)}</div><div class="meta">{" · ".join(meta)}</div>'
        f'<div class="links">{"".join(links)}</div>{error}</figcaption></figure>'
    )


def render_gallery(out: Path, jobs: Sequence[Job]) -> str:
    counts = {s: sum(j.state == s for j in jobs) for s in ("done", "failed", "running", "pending")}
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    cards = "\n".join(_card(out, j) for j in jobs)
    world = f' · <a href="{WORLD_NAME}">{WORLD_NAME}</a>' if (out / WORLD_NAME).exists() else ""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    links = f'<a href="{WORLD_PAGE}">all assets in 3D</a>{world}'
    return _page(out, "magic3d batch", f"{summary or 'no jobs'} · updated {stamp} · {links}", cards)


def render_world_page(out: Path, jobs: Sequence[Job]) -> str:
    """Every done asset's viewer in one grid, in world.usda's order; orbiting one turns them all,
    so they are compared from the same side."""
    tiles = []
    for j in jobs:
        preview = next((j.outputs[k] for k in _PREVIEW_KEYS if k in j.outputs), None)
        tag = viewer.viewer_tag(out, j, preview)
        if tag:
            tiles.append(f'<figure id="{html.escape(j.id, quote=True)}" data-state="done">{tag}'
                         f'<figcaption>{html.escape(j.prompt)}</figcaption></figure>')
    summary = f'{len(tiles)} assets · <a href="{GALLERY_NAME}">gallery</a>'
    return _page(out, "magic3d world", summary, "\n".join(tiles), _SYNC_SCRIPT)


# Orbiting one viewer by hand turns every other to the same angles.
_SYNC_SCRIPT = """
for (const mv of document.querySelectorAll('model-viewer')) {
  mv.addEventListener('camera-change', e => {
    if (e.detail.source !== 'user-interaction') return;
    const o = mv.getCameraOrbit();
    for (const other of document.querySelectorAll('model-viewer'))
      if (other !== mv) other.cameraOrbit = `${o.theta}rad ${o.phi}rad auto`;
  });
}
"""


def _page(out: Path, title: str, summary: str, body: str, script: str = "") -> str:
    return (
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{title} · {html.escape(out.name)}</title><style>{_STYLE}</style>{viewer.head_tags()}</head>\n"
        f"<body><h1>{title}</h1><p class=\"summary\">{summary}</p>"
        f"<div class=\"grid\">\n{body}\n</div><script>{_SCRIPT}{viewer.VIEWER_SCRIPT}{script}</script></body></html>\n"
    )


def write_gallery(out: Path, jobs: Sequence[Job]) -> Path:
    """``index.html`` and ``world.html``, after the viewer files they load."""
    out = Path(out)
    viewer.write_viewer_files(out, jobs)
    atomic_write_text(out / WORLD_PAGE, render_world_page(out, jobs))
    path = out / GALLERY_NAME
    atomic_write_text(path, render_gallery(out, jobs))
    return path


def write_batch_world(out: Path, jobs: Sequence[Job]) -> tuple[Path, int]:
    """``world.usda`` holding every done job that has a USD file and bounds; returns (path, count)."""
    from exporters.scene import WorldEntry, write_world

    usable = [j for j in jobs if j.state == "done" and j.bounds]
    axes = [j.bounds["up_axis"] for j in usable]
    up = "Z" if axes and axes.count("Z") > axes.count("Y") else "Y"
    entries = []
    for j in usable:
        b = j.bounds
        if b.get("up_axis", "Y") != up:
            continue  # one up axis per world; the gallery still lists the asset
        asset = next(j.outputs[k] for k in ("usdc", "usd", "usda", "usdz") if k in j.outputs)
        entries.append(
            WorldEntry(
                name=j.id, asset_path=Path(out) / asset, extent_min=tuple(b["min"]), extent_max=tuple(b["max"]),
                display_name=j.prompt[:200], custom_data=_world_data(j),
            )
        )
    mpu = usable[0].bounds.get("meters_per_unit", 1.0) if usable else 1.0
    path = write_world(entries, Path(out) / WORLD_NAME, up_axis=up, meters_per_unit=mpu)
    return path, len(entries)


def _world_data(job: Job) -> dict[str, str | int | float]:
    data: dict[str, str | int | float] = {"prompt": job.prompt}
    seed = job.seed if job.seed is not None else job.metrics.get("seed")
    if isinstance(seed, int):
        data["seed"] = seed
    if job.source is not None:
        data["source"] = job.source.describe()
    return data


@contextlib.contextmanager
def _folder_lock(out: Path) -> Iterator[None]:
    try:
        import fcntl  # noqa: F401
    except ImportError:  # no flock (Windows): renames are still atomic, only the order may race
        yield
        return
    from magic3d.batch.manifest import exclusive_lock

    with exclusive_lock(Path(out) / LOCK_NAME):
        yield


def publish(out: Path, manifest: Any, reporter: Any = None, world: bool = True) -> tuple[Path, Path]:
    """Rewrite ``world.usda`` (unless ``world=False``: nothing new to place) and ``index.html``
    from the folder's whole manifest.

    The manifest is read inside the lock, so the last writer always writes the newest state.
    """
    with _folder_lock(out):
        jobs = manifest.jobs()
        if not world:
            return Path(out) / WORLD_NAME, write_gallery(out, jobs)
        world_path, count = write_batch_world(out, jobs)
        gallery = write_gallery(out, jobs)
    if reporter is not None:
        reporter.emit("world", path=str(world_path), assets=count, gallery=str(gallery))
    return world_path, gallery
