"""``magic3d preview FILE``: a turntable GIF of any readable mesh file, drawn by our rasterizer.

Each part of the file is drawn with its own material (``exporters.read.load_parts``): a stage of
several assets shows each asset's colour, ``GeomSubset`` materials show where they are bound, and
textures wrap as the file says (glTF samplers, UsdUVTexture ``wrapS``/``wrapT``).
"""

from __future__ import annotations

from pathlib import Path

from magic3d.errors import InputError

READABLE = (".usd", ".usda", ".usdc", ".usdz", ".glb", ".gltf", ".obj", ".ply", ".stl")  # as exporters.read


def read_parts(asset: Path) -> list:
    """The file's parts, or one line saying it cannot be read (after ``require_file``)."""
    from exporters.read import load_parts

    try:
        return load_parts(asset)
    except ValueError as exc:
        if "holds no" in str(exc):
            raise InputError(f"{str(asset)!r} holds no triangle mesh; give a file with faces.") from None
        raise InputError(f"Could not read {str(asset)!r} as a mesh (ValueError).") from None
    except Exception as exc:  # a damaged file from anywhere: say so in one line
        raise InputError(f"Could not read {str(asset)!r} as a mesh ({type(exc).__name__}).") from None


def preview_file(asset: Path, out: Path | None = None, frames: int = 24, resolution: int = 256) -> Path:
    """Render ``frames`` views around ``asset`` into a GIF (default: ``<asset stem>.gif`` beside it)."""
    from magic3d.storage import atomic_path, ensure_writable_dir, path_kind, require_file

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
    # The renderer imports torch: only once the input is checked.
    from renderers.turntable import render_turntable, write_gif

    parts = read_parts(asset)
    ensure_writable_dir(out.parent)
    images = render_turntable(parts, frames=frames, resolution=resolution)
    with atomic_path(out) as tmp:
        write_gif(images, tmp)
    return out
