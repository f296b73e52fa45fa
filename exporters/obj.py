"""Wavefront OBJ with its MTL and PNG, for tools that read nothing newer.

The three files are written to temporary names and renamed texture first, OBJ last, so a reader
never finds an OBJ pointing at a missing material.
"""

from __future__ import annotations

from pathlib import Path

import trimesh

from exporters.common import AssetInfo, Surface, atomic_output, pbr_material, surface, write_png


def write_obj(mesh: trimesh.Trimesh, path: str | Path, info: AssetInfo | None = None) -> Path:
    """Write ``path`` (.obj) plus ``<stem>.mtl`` and ``<stem>_albedo.png`` beside it; returns ``path``.
    The OBJ's header comments record ``info`` (generator, prompt, seed, prior)."""
    path = Path(path)
    if path.suffix != ".obj":
        raise ValueError(f"write_obj writes .obj, not {path.name!r}")
    if len(mesh.faces) == 0:
        raise ValueError("cannot write an empty mesh to OBJ")
    surf = surface(mesh)
    stem = path.stem
    out = trimesh.Trimesh(vertices=mesh.vertices, faces=mesh.faces, process=False)
    out.vertex_normals = mesh.vertex_normals
    out.visual = trimesh.visual.TextureVisuals(uv=surf.uv, material=pbr_material(surf, name=stem))
    text, assets = trimesh.exchange.obj.export_obj(
        out, include_normals=True, include_texture=True, return_texture=True, mtl_name=f"{stem}.mtl",
        write_texture=False,
    )
    del assets  # trimesh's MTL gives every material a shiny 0.4 specular; ours is written below
    info = info or AssetInfo(name=stem)
    body = [line for line in text.splitlines() if not line.startswith("# https://github.com/mikedh/trimesh")]
    first = next((i for i, line in enumerate(body) if line.startswith("v ")), 0)
    text = header(info) + "\n".join([*body[:first], f"o {info.name}", *body[first:]]) + "\n"
    texture_name = f"{stem}_albedo.png"
    normal_name = f"{stem}_normal.png" if surf.normal_image is not None and surf.image is not None else None
    mtl_text = _mtl(stem, surf, texture_name if surf.image is not None else None, normal_name)
    if surf.image is not None:
        write_png(surf.image, path.with_name(texture_name))
    if normal_name is not None:
        write_png(surf.normal_image, path.with_name(normal_name))
    with atomic_output(path.with_suffix(".mtl")) as tmp:
        tmp.write_text(mtl_text, encoding="utf-8")
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def header(info: AssetInfo) -> str:
    """Comment lines naming the asset and what made it; one line each, whatever the prompt holds."""
    lines = [f"# {info.generator} {info.version} asset {info.name!r}"]
    lines += [f"# {key}: {' '.join(str(value).split())}" for key, value in info.provenance().items() if key != "generator"]
    return "\n".join(lines) + "\n"


def _mtl(name: str, surf: Surface, texture: str | None, normal: str | None = None) -> str:
    # Kd multiplies map_Kd, so it carries the base-colour factor; Pr/Pm are the PBR extension
    # Blender and others read; Ks 0 because a rough, non-metal surface has no shiny highlight.
    r, g, b, _ = surf.base_color
    lines = [
        "# magic3d asset material",
        f"newmtl {name}",
        f"Kd {r:.6f} {g:.6f} {b:.6f}",
        "Ka 0 0 0",
        "Ks 0 0 0",
        "Ns 10",
        "illum 1",
        f"Pr {surf.roughness:.6f}",
        f"Pm {surf.metallic:.6f}",
    ]
    if texture is not None:
        lines.append(f"map_Kd {texture}")
    if normal is not None:  # Blender reads map_Bump with -bm as a tangent-space normal map, as it writes one
        lines.append(f"map_Bump -bm 1.000000 {normal}")
    return "\n".join(lines) + "\n"
