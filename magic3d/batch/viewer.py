"""The gallery's 3D view: Google's ``<model-viewer>`` (vendored in ``vendor/``), one per asset.

The folder must work copied anywhere and opened from ``file://``, where Chromium refuses
``fetch()`` of local files: so beside each GLB the gallery keeps ``_gallery/<job>.glb.js``, a
classic script (allowed from ``file://``) that hands the GLB's bytes, base64, to the page, which
gives model-viewer a ``blob:`` URL. Served over HTTP (``magic3d gallery DIR --serve``) the page
points model-viewer at the GLB itself. A GLB over ``MAX_INLINE_BYTES`` gets no script: from
``file://`` its card keeps the poster and says to serve the folder.
"""

from __future__ import annotations

import base64
import html
import shutil
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote

from magic3d.batch.manifest import Job
from magic3d.storage import atomic_write_text

ASSETS_DIR = "_gallery"  # not a job's folder: slugs are lowercase letters, digits and dashes
VENDOR = Path(__file__).with_name("vendor")
VENDOR_FILES = ("model-viewer-umd.min.js", "LICENSE-model-viewer.txt")
MAX_INLINE_BYTES = 48 << 20  # base64 makes 64 MiB of script; the browser then holds both copies

# Turns each viewer's data-* into a src once it nears the screen, so a big gallery loads lazily.
VIEWER_SCRIPT = """
const served = location.protocol.startsWith('http');
const glbs = {};
function magic3dGlb(job, b64) {
  const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
  glbs[job] = URL.createObjectURL(new Blob([bytes], {type: 'model/gltf-binary'}));
  for (const mv of document.querySelectorAll(`model-viewer[data-job="${job}"]`)) mv.src = glbs[job];
}
function show(mv) {
  if (served) { mv.src = mv.dataset.glb; return; }
  if (glbs[mv.dataset.job]) { mv.src = glbs[mv.dataset.job]; return; }
  if (!mv.dataset.inline) { mv.dataset.status = 'serve'; return; }
  const s = document.createElement('script');
  s.src = mv.dataset.inline;
  document.head.appendChild(s);
}
const seen = new IntersectionObserver(entries => {
  for (const e of entries) if (e.isIntersecting) { seen.unobserve(e.target); show(e.target); }
}, {rootMargin: '200px'});
for (const mv of document.querySelectorAll('model-viewer')) {
  mv.addEventListener('load', () => { mv.dataset.status = 'loaded'; });
  mv.addEventListener('error', () => { mv.dataset.status = 'error'; });
  seen.observe(mv);
}
"""
VIEWER_STYLE = """
model-viewer { width: 100%; aspect-ratio: 1; background: #eee; --poster-color: #eee; }
model-viewer[data-status="serve"]::after { content: "too large for file://: magic3d gallery DIR --serve";
  position: absolute; bottom: .3rem; left: .3rem; font-size: .75rem; color: #666; }
"""


def head_tags() -> str:
    return f'<script src="{ASSETS_DIR}/{VENDOR_FILES[0]}"></script><style>{VIEWER_STYLE}</style>'


def glb_of(job: Job) -> str | None:
    return job.outputs.get("glb") if job.state == "done" else None


def inline_name(job: Job) -> str:
    return f"{ASSETS_DIR}/{job.id}.glb.js"


def viewer_tag(out: Path, job: Job, poster: str | None, extra: str = "") -> str:
    """A ``<model-viewer>`` for a done job's GLB, with its preview as poster (empty without a GLB)."""
    glb = glb_of(job)
    if glb is None:
        return ""
    esc = html.escape
    inline = inline_name(job)
    attrs = [f'data-job="{esc(job.id, quote=True)}"', f'data-glb="{quote(Path(glb).as_posix())}"',
             f'alt="{esc(job.prompt, quote=True)}"', "camera-controls", "touch-action=\"pan-y\"",
             "shadow-intensity=\"0.6\"", "environment-image=\"neutral\""]
    if (Path(out) / inline).is_file():
        attrs.append(f'data-inline="{quote(inline)}"')
    if poster:
        attrs.append(f'poster="{quote(Path(poster).as_posix())}"')
    return f"<model-viewer {' '.join(attrs)} {extra}></model-viewer>"


def write_viewer_files(out: Path, jobs: Sequence[Job]) -> None:
    """Copy model-viewer into ``_gallery/`` and write a ``.glb.js`` for each done GLB that lacks a
    current one (a GLB is encoded once, not at every publish)."""
    folder = Path(out) / ASSETS_DIR
    folder.mkdir(exist_ok=True)
    for name in VENDOR_FILES:
        src, dst = VENDOR / name, folder / name
        if not dst.is_file() or dst.stat().st_size != src.stat().st_size:
            tmp = dst.with_name(f".{name}.tmp")
            shutil.copyfile(src, tmp)
            tmp.replace(dst)
    for job in jobs:
        glb = glb_of(job)
        if glb is None:
            continue
        src, dst = Path(out) / glb, Path(out) / inline_name(job)
        try:
            stat = src.stat()
        except OSError:
            continue
        if stat.st_size > MAX_INLINE_BYTES or (dst.is_file() and dst.stat().st_mtime >= stat.st_mtime):
            continue
        data = base64.b64encode(src.read_bytes()).decode("ascii")
        atomic_write_text(dst, f'magic3dGlb("{job.id}", "{data}");\n')
