"""``magic3d convert FILE --format usdz,glb,...``: any readable mesh file to assets through our writers.

The file is read by ``exporters.read.load_parts`` and written by ``exporters.export_asset`` (placed
on the ground, largest side ``--size`` metres, USD ``--up-axis``), with provenance
``generator="magic3d convert"``. The writers take one material per asset, so:

- a file whose parts all look alike (one material or none, no vertex colours; every file we write)
  converts exactly: the same welded vertices, UVs and texture;
- anything else (several materials, vertex colours, a clamped or mirrored texture whose UVs leave
  0..1) is baked into one texture: an xatlas atlas over all parts, each texel coloured as the
  source draws that point (its image, wrapped as the file says, times its base and vertex colours).

Every check (formats, the file, reading it) comes before anything is written.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from magic3d.errors import InputError

BAKE_TEXTURE_SIZE = 1024
MAX_SIZE_M = 1e6


def parse_formats(formats: str | None) -> list[str]:
    # EXPORT_FORMATS, not exporters.FORMATS (the same list): the writers (trimesh, USD) are
    # imported only once the input is checked.
    from magic3d.config import EXPORT_FORMATS, shown

    chosen = [f.strip().lower() for f in (formats or "usdz").split(",") if f.strip()]
    unknown = [f for f in chosen if f not in EXPORT_FORMATS]
    if unknown or not chosen:
        raise InputError(f"Unknown format {shown(unknown or formats)}; choose from {', '.join(EXPORT_FORMATS)}.")
    return list(dict.fromkeys(chosen))


def convert_file(
    source: str | Path, formats: str | None = "usdz", out: str | Path | None = None, up_axis: str = "Y",
    size_m: float = 1.0,
) -> dict[str, Path]:
    """Write ``<out>/asset.<format>`` for each format (``out`` defaults to ``<stem>/`` beside the file)."""
    from magic3d.config import shown
    from magic3d.info import package_versions
    from magic3d.preview import READABLE, read_parts
    from magic3d.storage import confined, ensure_writable_dir, require_file

    source = Path(source)
    chosen = parse_formats(formats)
    axis = str(up_axis).upper()
    if axis not in ("Y", "Z"):
        raise InputError(f"--up-axis must be Y or Z, not {shown(up_axis)}.")
    if isinstance(size_m, bool) or not isinstance(size_m, int | float) or not math.isfinite(size_m) \
            or not 0 < size_m <= MAX_SIZE_M:
        raise InputError(f"--size must be a positive, finite number of metres up to {MAX_SIZE_M:g}, not {shown(size_m)}.")
    if source.suffix.lower() not in READABLE:
        raise InputError(f"Cannot convert {source.name!r}: expected one of {', '.join(READABLE)}.")
    require_file(source, "mesh file")
    if out is not None and not str(out).strip():  # Path("") would be ".", the current folder
        raise InputError("--out is empty; give the folder to write into, e.g. --out converted.")
    out_dir = Path(out) if out is not None else source.parent / source.stem
    for fmt in chosen:
        if (out_dir / f"asset.{fmt}").resolve() == source.resolve():
            raise InputError(f"Converting {str(source)!r} into {str(out_dir)!r} would overwrite it; choose another --out.")
    from exporters import AssetInfo, export_asset

    parts = read_parts(source)
    mesh = one_mesh(parts)
    if len(mesh.faces) == 0:
        raise InputError(f"{str(source)!r} holds no triangle mesh to convert.")
    ensure_writable_dir(out_dir)
    version = package_versions(("magic3d",))["magic3d"] or "0"
    info = AssetInfo(name=source.stem, prompt="", generator="magic3d convert", version=version)
    with confined(out_dir):
        return export_asset(mesh, out_dir, chosen, info, up_axis=axis, size_m=float(size_m))


def needs_bake(parts: list[Any]) -> bool:
    """True when one material cannot carry the file's look (see the module docstring)."""
    import numpy as np

    first = parts[0].material
    for part in parts:
        if part.colors is not None and not np.allclose(part.colors, part.colors[:1]):
            return True
        material = part.material
        if (material is None) != (first is None) or (material is not None and not material.same_look(first)):
            return True
        if material is not None and material.image is not None and part.uv is not None:
            leaves = (part.uv < 0).any(0) | (part.uv > 1).any(0)
            if (leaves[0] and material.wrap_s != "repeat") or (leaves[1] and material.wrap_t != "repeat"):
                return True
    return False


def one_mesh(parts: list[Any]):
    """The parts as the one textured ``trimesh.Trimesh`` the writers take."""
    from exporters.read import merged

    if not needs_bake(parts):
        mesh = merged(parts)
        if parts[0].colors is not None:  # one colour over every vertex: a plain material colour
            return _flat(mesh, parts[0])
        return mesh
    return bake_parts(parts)


def _flat(mesh, part):
    import numpy as np
    import trimesh

    from exporters.read import Material, Part

    base = np.asarray(part.material.base_color if part.material else (1, 1, 1, 1)) * part.colors[0]
    flat = Part(part.name, mesh.vertices, mesh.faces, normals=np.asarray(mesh.vertex_normals),
                material=Material(name="colour", base_color=tuple(float(c) for c in base)))
    out = flat.to_trimesh()
    assert isinstance(out, trimesh.Trimesh)
    return out


def bake_parts(parts: list[Any], size: int = BAKE_TEXTURE_SIZE):
    """Every part's look baked into one texture over an xatlas atlas of all parts."""
    import numpy as np
    import torch
    import trimesh
    from PIL import Image

    from exporters.common import Surface, pbr_material
    from exporters.read import vertex_colors
    from magic3d.bake import BakeConfig, bake_texture, uv_atlas
    from renderers.mesh_render import Texture, sample_texture
    from renderers.raster import get_rasterizer

    offsets = np.cumsum([0] + [len(p.vertices) for p in parts[:-1]])
    vertices = np.concatenate([p.vertices for p in parts])
    faces = np.concatenate([p.faces + o for p, o in zip(parts, offsets, strict=True)])
    colours = np.concatenate([vertex_colors(p, missing=(0.75, 0.75, 0.75, 1.0)) for p in parts])[:, :3]
    # Per vertex: its UV in its own texture and the index of its part (constant over each face).
    source_uv = np.concatenate([p.uv if p.uv is not None else np.zeros((len(p.vertices), 2)) for p in parts])
    which = np.concatenate([np.full(len(p.vertices), k, dtype=np.float64) for k, p in enumerate(parts)])
    cfg = BakeConfig(texture_size=size)
    vmap, atlas_faces, atlas_uv = uv_atlas(vertices, faces, size, cfg.padding_px, cfg.atlas_piece_faces)

    raster = get_rasterizer("cpu")
    textures = {}
    for k, part in enumerate(parts):
        material = part.material
        if material is not None and material.image is not None and part.uv is not None:
            pixels = np.asarray(material.image.convert("RGB"), dtype=np.float32) / 255.0
            textures[k] = Texture(torch.as_tensor(pixels), material.wrap_s, material.wrap_t)

    def textured(points: torch.Tensor) -> torch.Tensor:  # (u, v, part) -> the part's texture there
        out = torch.ones_like(points)
        index = points[:, 2].round().long()
        for k, texture in textures.items():
            mask = index == k
            if bool(mask.any()):
                out[mask] = sample_texture(raster, texture, points[mask, :2])
        return out

    attributes = np.column_stack([source_uv, which])[vmap]
    image = bake_texture(attributes, atlas_faces, atlas_uv, textured, cfg).astype(np.float64)
    tint = bake_texture(colours[vmap], atlas_faces, atlas_uv, lambda c: c, cfg).astype(np.float64)
    baked = Image.fromarray(np.clip(image * tint / 255.0 + 0.5, 0, 255).astype(np.uint8))
    normals = None
    if all(p.normals is not None for p in parts):
        normals = np.concatenate([p.normals for p in parts])[vmap]
    mesh = trimesh.Trimesh(vertices[vmap], atlas_faces, vertex_normals=normals, process=False)
    surf = Surface(uv=atlas_uv, image=baked, base_color=(1.0, 1.0, 1.0, 1.0),
                   roughness=float(np.mean([p.material.roughness if p.material else 1.0 for p in parts])),
                   metallic=float(np.mean([p.material.metallic if p.material else 0.0 for p in parts])))
    mesh.visual = trimesh.visual.TextureVisuals(uv=atlas_uv, material=pbr_material(surf, "baked"))
    return mesh
