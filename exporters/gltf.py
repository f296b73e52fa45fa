"""Binary glTF (.glb) through trimesh, with an explicit PBR material.

glTF is Y-up and in metres by definition, so there is no up-axis choice here; ``export_asset``
places and scales the mesh before calling ``write_glb``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trimesh

from exporters.common import AssetInfo, atomic_output, pbr_material, surface


def glb_bytes(mesh: trimesh.Trimesh, info: AssetInfo | None = None) -> bytes:
    """glTF keeps UV seams split (its attributes are per vertex); ``info`` names the mesh and node
    and fills ``asset.generator`` and ``asset.extras`` (prompt, seed, prior)."""
    surf = surface(mesh)
    out = trimesh.Trimesh(vertices=mesh.vertices, faces=mesh.faces, process=False)
    # Normals computed on the caller's mesh (e.g. before UV seams split it) are kept as given.
    out.vertex_normals = mesh.vertex_normals
    # trimesh's default for a bare texture is a 0.4 grey base-colour factor: always pass our own.
    name = info.name if info else "asset"
    out.visual = trimesh.visual.TextureVisuals(uv=surf.uv, material=pbr_material(surf, name=f"{name}-material"))

    def stamp(tree: dict[str, Any]) -> None:
        if info is None:
            return
        tree["asset"]["generator"] = f"{info.generator} {info.version}"
        tree["asset"]["extras"] = info.provenance()
        for entry in (*tree.get("meshes", []), *tree.get("nodes", [])):
            entry["name"] = name

    scene = trimesh.Scene(geometry={name: out})
    return trimesh.exchange.gltf.export_glb(scene, include_normals=True, tree_postprocessor=stamp)


def write_glb(mesh: trimesh.Trimesh, path: str | Path, info: AssetInfo | None = None) -> Path:
    """Write ``mesh`` (UVs + PBR material) as one self-contained ``.glb``; returns ``path``."""
    path = Path(path)
    if len(mesh.faces) == 0:
        raise ValueError("cannot write an empty mesh to glTF")
    data = glb_bytes(mesh, info)
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)
    return path
