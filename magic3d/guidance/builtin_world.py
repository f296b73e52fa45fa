"""The built-in prior's world: procedural objects with a small vocabulary of kinds, colours and sizes.

Every object is Y-up, centred, and fits inside a sphere of radius ~0.9, the same frame the
stages optimise in, so what the prior learned to see is what the stages render.
"""

from __future__ import annotations

import math

import numpy as np
import trimesh

KINDS = (
    "sphere", "cube", "cylinder", "cone", "torus", "capsule", "pyramid",
    "mushroom", "snowman", "table", "lamp", "tree", "house",
)
COLOURS = {
    "red": (0.85, 0.12, 0.10),
    "orange": (0.95, 0.50, 0.08),
    "yellow": (0.95, 0.85, 0.12),
    "green": (0.15, 0.65, 0.20),
    "blue": (0.12, 0.25, 0.85),
    "purple": (0.50, 0.18, 0.70),
    "pink": (0.95, 0.50, 0.70),
    "brown": (0.45, 0.28, 0.12),
    "black": (0.08, 0.08, 0.08),
    "gray": (0.55, 0.55, 0.55),
}
SIZES = {"small": 0.72, "big": 1.0}
DEFAULT_SCALE = 0.85
# Genus of each kind's surface, for checks on meshes made from it.
GENUS = {kind: 0 for kind in KINDS} | {"torus": 1}

# Cameras of the training renders; the ``builtin`` preset's stages orbit within the same ranges
# (degrees; distance in scene units) so the prior sees objects at the size it learned them.
ORBIT = {"elevation": (-10.0, 50.0), "azimuth": (-180.0, 180.0), "distance": (2.4, 2.8), "fov_y": (38.0, 48.0)}

_Z_TO_Y = trimesh.transformations.rotation_matrix(-math.pi / 2, [1, 0, 0])


def _upright(mesh: trimesh.Trimesh, y: float = 0.0) -> trimesh.Trimesh:
    """trimesh builds primitives along +Z; turn them to +Y and lift the centre to ``y``."""
    mesh = mesh.copy()
    mesh.apply_transform(_Z_TO_Y)
    mesh.apply_translation([0.0, y, 0.0])
    return mesh


def _box(extents, centre) -> trimesh.Trimesh:
    mesh = trimesh.creation.box(extents=extents)
    mesh.apply_translation(centre)
    return mesh


def _parts(kind: str) -> list[tuple[trimesh.Trimesh, float]]:
    """Meshes of one object and the brightness of each part relative to the object's colour."""
    c = trimesh.creation
    if kind == "sphere":
        return [(c.icosphere(3, radius=0.75), 1.0)]
    if kind == "cube":
        return [(c.box(extents=(1.05, 1.05, 1.05)), 1.0)]
    if kind == "cylinder":
        return [(_upright(c.cylinder(radius=0.5, height=1.3, sections=40)), 1.0)]
    if kind == "cone":
        return [(_upright(c.cone(radius=0.65, height=1.4, sections=40), -0.6), 1.0)]
    if kind == "torus":
        torus = c.torus(major_radius=0.58, minor_radius=0.22, major_sections=48, minor_sections=20)
        # Tilted toward the front so the hole shows from the front and from above.
        torus.apply_transform(trimesh.transformations.rotation_matrix(math.radians(-40), [1, 0, 0]))
        return [(_upright(torus), 1.0)]
    if kind == "capsule":
        return [(_upright(c.capsule(height=0.9, radius=0.38, count=[24, 24])), 1.0)]
    if kind == "pyramid":
        pyramid = c.cone(radius=0.85, height=1.2, sections=4)
        pyramid.apply_transform(trimesh.transformations.rotation_matrix(math.pi / 4, [0, 0, 1]))
        return [(_upright(pyramid, -0.5), 1.0)]
    if kind == "mushroom":
        cap = c.icosphere(3, radius=0.62)
        cap = cap.slice_plane([0, 0, 0], [0, 1, 0], cap=True)
        cap.apply_scale([1.0, 0.75, 1.0])
        cap.apply_translation([0, 0.05, 0])
        stem = _upright(c.cylinder(radius=0.2, height=0.7, sections=24), -0.3)
        return [(cap, 1.0), (stem, 0.8)]
    if kind == "snowman":
        bottom = c.icosphere(3, radius=0.42)
        bottom.apply_translation([0, -0.45, 0])
        middle = c.icosphere(3, radius=0.32)
        middle.apply_translation([0, 0.2, 0])
        head = c.icosphere(3, radius=0.22)
        head.apply_translation([0, 0.68, 0])
        return [(bottom, 1.0), (middle, 1.0), (head, 1.0)]
    if kind == "table":
        top = _box((1.4, 0.12, 0.9), (0, 0.25, 0))
        legs = [_box((0.1, 0.7, 0.1), (sx * 0.6, -0.2, sz * 0.35)) for sx in (-1, 1) for sz in (-1, 1)]
        return [(top, 1.0), *[(leg, 0.8) for leg in legs]]
    if kind == "lamp":
        base = _upright(c.cylinder(radius=0.35, height=0.1, sections=32), -0.7)
        pole = _upright(c.cylinder(radius=0.05, height=0.9, sections=16), -0.2)
        shade = _upright(c.cone(radius=0.45, height=0.55, sections=32), 0.2)
        return [(base, 0.8), (pole, 0.7), (shade, 1.0)]
    if kind == "tree":
        trunk = _upright(c.cylinder(radius=0.12, height=0.6, sections=16), -0.55)
        crown = _upright(c.cone(radius=0.55, height=1.3, sections=32), -0.3)
        return [(trunk, 0.55), (crown, 1.0)]
    if kind == "house":
        walls = _box((1.0, 0.7, 0.9), (0, -0.35, 0))
        roof = c.cone(radius=0.78, height=0.55, sections=4)
        roof.apply_transform(trimesh.transformations.rotation_matrix(math.pi / 4, [0, 0, 1]))
        roof = _upright(roof, 0.0)
        door = _box((0.22, 0.38, 0.04), (0, -0.51, 0.46))
        return [(walls, 1.0), (roof, 0.7), (door, 0.4)]
    raise ValueError(f"unknown kind {kind!r}; known: {', '.join(KINDS)}")


def make_object(
    kind: str, colour: str | tuple[float, float, float] = "gray", size: str | float | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(vertices "V 3", faces "F 3", vertex colours "V 3") of one object."""
    rgb = np.asarray(COLOURS[colour] if isinstance(colour, str) else colour, dtype=np.float64)
    scale = SIZES[size] if isinstance(size, str) else (size or DEFAULT_SCALE)
    verts, faces, colours, offset = [], [], [], 0
    for mesh, brightness in _parts(kind):
        verts.append(np.asarray(mesh.vertices) * scale)
        faces.append(np.asarray(mesh.faces) + offset)
        colours.append(np.tile(np.clip(rgb * brightness, 0, 1), (len(mesh.vertices), 1)))
        offset += len(mesh.vertices)
    return (np.concatenate(verts).astype(np.float32), np.concatenate(faces).astype(np.int64),
            np.concatenate(colours).astype(np.float32))


def canonical_mesh(kind: str) -> trimesh.Trimesh:
    """One watertight-as-possible mesh per kind, for recognising shapes in generated assets."""
    verts, faces, _ = make_object(kind)
    return trimesh.Trimesh(verts, faces, process=True)
