"""Asset writers: USD/USDA/USDZ, GLB, OBJ and world-stage assembly.

A library, not part of the pipeline: it never imports ``magic3d``. Every writer takes a
``trimesh.Trimesh`` with UVs and a ``PBRMaterial`` and writes to a temporary name first.
"""

from __future__ import annotations

from pathlib import Path

import trimesh
from PIL import Image

from exporters.common import AssetInfo, check_up_axis, make_dirs, placed, placement
from exporters.gltf import write_glb
from exporters.obj import write_obj
from exporters.read import load_asset
from exporters.usd import WOOD, Physics, write_usd, write_usdz

FORMATS = ("usdc", "usda", "usdz", "glb", "obj")


def export_asset(
    mesh: trimesh.Trimesh, out_dir: str | Path, formats: list[str] | tuple[str, ...], info: AssetInfo | None = None,
    up_axis: str = "Y", size_m: float = 1.0, stem: str = "asset", physics: Physics | None = WOOD,
    thumbnail: Image.Image | None = None,
) -> dict[str, Path]:
    """Write ``<out_dir>/<stem>.<format>`` for each format; returns ``{format: path}``.

    Every format gets the same placement: largest side ``size_m`` metres, standing on the ground at
    the origin. USD honours ``up_axis`` and carries ``physics`` (None: none) and the ``thumbnail``;
    glTF is Y-up by definition and OBJ is conventionally Y-up.
    """
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ValueError(f"unknown export formats {unknown or list(formats)}; choose from {', '.join(FORMATS)}")
    check_up_axis(up_axis)
    out_dir = Path(out_dir)
    make_dirs(out_dir)
    info = info or AssetInfo(name=stem)
    files: dict[str, Path] = {}
    y_up = None
    for fmt in dict.fromkeys(formats):
        target = out_dir / f"{stem}.{fmt}"
        if fmt in ("usdc", "usda"):
            files[fmt] = write_usd(mesh, target, info, up_axis, size_m, physics, thumbnail)
        elif fmt == "usdz":
            files[fmt] = write_usdz(mesh, target, info, up_axis, size_m, up_axis.upper() == "Y", physics, thumbnail)
        else:
            if y_up is None:
                y_up = placed(mesh, placement(mesh.vertices, "Y", size_m))
            files[fmt] = write_glb(y_up, target, info) if fmt == "glb" else write_obj(y_up, target, info)
    return files


__all__ = [
    "FORMATS",
    "AssetInfo",
    "Physics",
    "export_asset",
    "load_asset",
    "write_glb",
    "write_obj",
    "write_usd",
    "write_usdz",
]
