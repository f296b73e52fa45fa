"""Binary glTF (.glb) through trimesh, with an explicit PBR material.

glTF is Y-up and in metres by definition, so there is no up-axis choice here; ``export_asset``
places and scales the mesh before calling ``write_glb``.
"""

from __future__ import annotations

from pathlib import Path

import trimesh

from exporters.common import atomic_output, pbr_material, surface


def glb_bytes(mesh: trimesh.Trimesh) -> bytes:
    surf = surface(mesh)
    out = trimesh.Trimesh(vertices=mesh.vertices, faces=mesh.faces, process=False)
    # Normals computed on the caller's mesh (e.g. before UV seams split it) are kept as given.
    out.vertex_normals = mesh.vertex_normals
    # trimesh's default for a bare texture is a 0.4 grey base-colour factor: always pass our own.
    out.visual = trimesh.visual.TextureVisuals(uv=surf.uv, material=pbr_material(surf))
    return trimesh.exchange.gltf.export_glb(trimesh.Scene(out), include_normals=True)


def write_glb(mesh: trimesh.Trimesh, path: str | Path) -> Path:
    """Write ``mesh`` (UVs + PBR material) as one self-contained ``.glb``; returns ``path``."""
    path = Path(path)
    if len(mesh.faces) == 0:
        raise ValueError("cannot write an empty mesh to glTF")
    data = glb_bytes(mesh)
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)
    return path
