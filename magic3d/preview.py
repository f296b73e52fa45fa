"""``magic3d preview FILE``: a turntable GIF of any exported asset, drawn by our rasterizer."""

from __future__ import annotations

from pathlib import Path

from magic3d.errors import InputError

READABLE = (".usd", ".usda", ".usdc", ".usdz", ".glb", ".obj")


def preview_file(asset: Path, out: Path | None = None, frames: int = 24, resolution: int = 256) -> Path:
    """Render ``frames`` views around ``asset`` into a GIF (default: ``<asset stem>.gif`` beside it)."""
    from exporters import load_asset
    from magic3d.export import write_preview
    from magic3d.storage import ensure_writable_dir, path_kind, require_file

    asset = Path(asset)
    if asset.suffix.lower() not in READABLE:
        raise InputError(f"Cannot preview {asset.name!r}: expected one of {', '.join(READABLE)}.")
    require_file(asset, "asset")
    if not 1 <= frames <= 360:
        raise InputError(f"--frames must be between 1 and 360, not {frames}.")
    if not 16 <= resolution <= 2048:
        raise InputError(f"--resolution must be between 16 and 2048, not {resolution}.")
    out = Path(out) if out is not None else asset.with_suffix(".gif")
    if out.suffix.lower() != ".gif":
        raise InputError(f"The preview is a GIF; give --out a .gif path, not {out.name!r}.")
    if path_kind(out) not in ("nothing", "a file"):
        raise InputError(f"--out {str(out)!r} is {path_kind(out)}, not a GIF file; choose another path.")
    try:
        mesh = load_asset(asset)
    except Exception as exc:  # a damaged file from anywhere: say so in one line
        raise InputError(f"Could not read {str(asset)!r} as a mesh ({type(exc).__name__}).") from None
    ensure_writable_dir(out.parent)
    return write_preview(mesh, out, frames, resolution)
