"""Read any mesh file back: ``load_parts`` gives each part with its own material, ``load_asset``
one ``trimesh.Trimesh`` (UVs + PBR material) for callers that take one mesh.

Readable: USD (``.usd``, ``.usda``, ``.usdc``, ``.usdz``) through pxr; glTF (``.glb``, ``.gltf``),
``.obj``, ``.ply`` and ``.stl`` through trimesh. ``frame="source"`` (default) returns the generator's
coordinates: the placement our USD writer baked into the points is undone with the transform it
recorded (other USD files are only turned Y-up). ``frame="stage"`` returns the points as the file
places them (after every transform in the file).

``load_asset`` of a file whose parts look alike (every file we write) keeps their UVs and
material; parts that differ become per-vertex colours (base colour times vertex colours), except
that a textured first part lends its texture to all (``magic3d convert`` bakes such files into one
texture instead). Use ``load_parts`` to draw or convert every part right.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import trimesh

from exporters.read.parts import WRAPS, Material, Part, merged, vertex_colors

Frame = Literal["source", "stage"]
USD_SUFFIXES = (".usd", ".usda", ".usdc", ".usdz")
READABLE = (*USD_SUFFIXES, ".glb", ".gltf", ".obj", ".ply", ".stl")


def load_parts(path: str | Path, frame: Frame = "source") -> list[Part]:
    """Every part of the file (at least one, each with faces), placed in ``frame``."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in READABLE:
        raise ValueError(f"cannot read {path.name!r}: expected one of {', '.join(READABLE)}")
    if frame not in ("source", "stage"):
        raise ValueError(f"frame must be 'source' or 'stage', not {frame!r}")
    if not path.is_file():
        raise FileNotFoundError(f"no such asset: {str(path)!r}")
    if suffix in USD_SUFFIXES:
        from exporters.read.usd import load_usd_parts

        parts = load_usd_parts(path, frame)
    else:
        from exporters.read.mesh_files import load_mesh_file_parts

        parts = load_mesh_file_parts(path)
    parts = [p for p in parts if len(p.faces)]
    if not parts:
        raise ValueError(f"{str(path)!r} holds no triangle mesh")
    for part in parts:  # a damaged file must fail here, not in whoever draws or writes it
        if part.faces.min() < 0 or part.faces.max() >= len(part.vertices):
            raise ValueError(f"{part.name!r} in {str(path)!r} has faces that point past its vertices")
        if not np.isfinite(part.vertices).all():
            raise ValueError(f"{part.name!r} in {str(path)!r} has points that are not finite numbers")
    return [p.compacted() for p in parts]


def load_asset(path: str | Path, frame: Frame = "source") -> trimesh.Trimesh:
    """All parts of the file as one mesh (see the module docstring for how materials merge)."""
    return merged(load_parts(path, frame))


__all__ = ["READABLE", "WRAPS", "Frame", "Material", "Part", "load_asset", "load_parts", "merged", "vertex_colors"]
