"""What a reader hands back: the parts of a file, each with its own geometry and material.

A part is one piece of a file drawn with one material: a USD mesh (or one of its ``GeomSubset``
material groups), a glTF primitive placed by its node, one material group of an OBJ, a PLY or STL
mesh. Points are in the frame ``load_parts`` was asked for; UVs follow trimesh (v = 0 at the
bottom row of the image); colours are 0..1 factors as the file stores them (no colour management).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import trimesh
from PIL import Image

from exporters.common import Surface, pbr_material

WRAPS = ("repeat", "clamp", "mirror", "black")  # UsdUVTexture's wrap modes; glTF has the first three


@dataclass(frozen=True)
class Material:
    """The subset of a file's material a previewer and our writers use (PBR metallic-roughness)."""

    name: str = ""
    base_color: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)  # multiplies the image
    image: Image.Image | None = field(default=None, compare=False)  # base colour, row 0 at the top
    wrap_s: str = "repeat"  # along u
    wrap_t: str = "repeat"  # along v
    roughness: float = 1.0
    metallic: float = 0.0
    normal_image: Image.Image | None = field(default=None, compare=False)  # tangent-space, OpenGL convention

    def same_look(self, other: Material) -> bool:
        """Draws the same: equal factors and wraps, and the same image (or none)."""
        return (replace(self, name="") == replace(other, name="")
                and (self.image is other.image or _same_image(self.image, other.image)))


@dataclass
class Part:
    """One piece of geometry with one material; ``material`` is None when the file gives no colour at all."""

    name: str
    vertices: np.ndarray  # "V 3" float64
    faces: np.ndarray  # "F 3" int64
    uv: np.ndarray | None = None  # "V 2"
    normals: np.ndarray | None = None  # "V 3" unit, the file's own
    colors: np.ndarray | None = None  # "V 4" 0..1 vertex colours (PLY, glTF COLOR_0, USD displayColor)
    material: Material | None = None

    def transformed(self, matrix: np.ndarray) -> Part:
        """This part moved by the 4x4 ``matrix`` (normals by its inverse transpose)."""
        linear = matrix[:3, :3]
        vertices = self.vertices @ linear.T + matrix[:3, 3]
        faces = self.faces if np.linalg.det(linear) >= 0 else self.faces[:, ::-1]
        normals = None
        if self.normals is not None:
            normals = self.normals @ np.linalg.inv(linear)
            normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
        return replace(self, vertices=vertices, faces=faces, normals=normals)

    def compacted(self) -> Part:
        """This part without the vertices no face uses (trimesh keeps every OBJ vertex in each
        material's piece); the same part when it uses them all."""
        used = np.zeros(len(self.vertices), dtype=bool)
        used[self.faces.reshape(-1)] = True
        if used.all():
            return self
        new = np.cumsum(used) - 1
        pick = (lambda a: a[used] if a is not None else None)  # noqa: E731
        return replace(self, vertices=self.vertices[used], faces=new[self.faces], uv=pick(self.uv),
                       normals=pick(self.normals), colors=pick(self.colors))

    def to_trimesh(self) -> trimesh.Trimesh:
        """A ``trimesh.Trimesh`` with this part's UVs and a ``PBRMaterial`` (or vertex colours)."""
        mesh = trimesh.Trimesh(self.vertices, self.faces, vertex_normals=self.normals, process=False)
        mat = self.material
        if self.uv is not None and (mat is not None or self.colors is None):
            mat = mat or Material()
            surf = Surface(uv=self.uv, image=mat.image, base_color=mat.base_color, roughness=mat.roughness,
                           metallic=mat.metallic, normal_image=mat.normal_image)
            mesh.visual = trimesh.visual.TextureVisuals(uv=self.uv, material=pbr_material(surf, mat.name or "material"))
        elif self.colors is not None:
            mesh.visual = trimesh.visual.ColorVisuals(mesh, vertex_colors=_bytes(self.colors))
        elif mat is not None:
            mesh.visual = trimesh.visual.ColorVisuals(mesh, vertex_colors=_bytes(np.tile(mat.base_color, (len(self.vertices), 1))))
        return mesh


def merged(parts: Sequence[Part]) -> trimesh.Trimesh:
    """All parts as one ``trimesh.Trimesh``. Parts that all look alike keep their UVs and material;
    parts that differ become per-vertex colours (each part's base colour times its vertex colours),
    except that a textured first part keeps its texture for every part (``load_parts`` has them all)."""
    if len(parts) == 1:
        return parts[0].to_trimesh()
    offsets = np.cumsum([0] + [len(p.vertices) for p in parts[:-1]])
    vertices = np.concatenate([p.vertices for p in parts])
    faces = np.concatenate([p.faces + o for p, o in zip(parts, offsets, strict=True)])
    normals = None
    if all(p.normals is not None for p in parts):
        normals = np.concatenate([p.normals for p in parts])
    first = parts[0]
    alike = all(p.material is not None and first.material is not None and p.material.same_look(first.material)
                for p in parts) or all(p.material is None for p in parts)
    textured = first.material is not None and first.material.image is not None
    has_uv = all(p.uv is not None for p in parts)
    whole = Part("merged", vertices, faces, normals=normals, material=first.material)
    if (alike or textured) and has_uv and all(p.colors is None for p in parts):
        whole.uv = np.concatenate([p.uv for p in parts])
        return whole.to_trimesh()
    if alike and all(p.colors is None for p in parts):
        return whole.to_trimesh()
    whole.colors = np.concatenate([vertex_colors(p) for p in parts])
    return whole.to_trimesh()


def vertex_colors(part: Part, missing: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)) -> np.ndarray:
    """"V 4" colour of each vertex with the material's base colour folded in (textures left out)."""
    base = np.asarray(part.material.base_color if part.material is not None else missing, dtype=np.float64)
    colours = part.colors if part.colors is not None else np.ones((len(part.vertices), 4))
    return np.asarray(colours, dtype=np.float64) * base


def _bytes(colors: np.ndarray) -> np.ndarray:
    rgba = np.asarray(colors, dtype=np.float64)
    if rgba.shape[1] == 3:
        rgba = np.column_stack([rgba, np.ones(len(rgba))])
    return np.round(np.clip(rgba, 0.0, 1.0) * 255).astype(np.uint8)


def _same_image(a: Image.Image | None, b: Image.Image | None) -> bool:
    if a is None or b is None:
        return a is b
    return a.size == b.size and a.mode == b.mode and a.tobytes() == b.tobytes()
