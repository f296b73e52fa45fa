"""The built-in prior's world: procedural objects with a small vocabulary of kinds, colours and sizes.

Every object is Y-up, centred, and fits inside the cube [-1, 1]^3, the same frame the
stages optimise in, so what the prior learned to see is what the stages render.
"""

from __future__ import annotations

import math

import numpy as np
import trimesh

from magic3d.guidance.builtin_words import COLOURS, KINDS, SIZES

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


def occupancy(meshes: list[trimesh.Trimesh], resolution: int = 24) -> np.ndarray:
    """Inside-voxels "R R R" (x, y, z) of the union of closed meshes, after normalising their joint bounds.

    Normalising position and scale (bounding box centred, longest side spanning the grid) lets a
    generated asset be compared with ``canonical_mesh`` whatever its size. Parts are tested one by
    one because overlapping parts would confuse a parity test on their concatenation.
    """
    mid, half = _grid_frame(np.concatenate([m.bounds for m in meshes]))
    axes = [_unit_centres(resolution) * half + mid[i] for i in range(3)]
    inside = np.zeros((resolution,) * 3, dtype=bool)
    for mesh in meshes:
        inside |= _parity_voxels(np.asarray(mesh.vertices, np.float64), np.asarray(mesh.faces), axes)
    return inside


def _grid_frame(points: np.ndarray) -> tuple[np.ndarray, float]:
    """(centre "3", half side) of the cube ``occupancy`` voxelises: the points' bounding box centred,
    its longest side spanning the grid."""
    lo, hi = points.min(axis=0), points.max(axis=0)
    return 0.5 * (lo + hi), 0.5 * float(np.max(hi - lo))


def _unit_centres(resolution: int) -> np.ndarray:
    """Voxel centres along one side of the grid, in [-1, 1]."""
    return (np.arange(resolution) + 0.5) / resolution * 2.0 - 1.0


def _parity_voxels(
    vertices: np.ndarray, faces: np.ndarray, axes: list[np.ndarray], columns_per_chunk: int = 256
) -> np.ndarray:
    """Voxel centres inside a closed mesh by counting surface crossings along +Z rays, one per (x, y) column.

    Deterministic (ray parity tests with random directions are not); columns are nudged off the
    grid by a tiny irrational offset so no ray runs exactly through a shared triangle edge. Columns
    go in chunks so memory stays at chunk x faces whatever the resolution.
    """
    nudge = 1e-5 * (np.max(vertices) - np.min(vertices) + 1.0)
    px, py = np.meshgrid(axes[0] + nudge * 0.618, axes[1] + nudge * 0.414, indexing="ij")
    p = np.stack([px.ravel(), py.ravel()], axis=-1)  # C 2
    tri = vertices[faces]  # F 3 3
    a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]
    v0, v1 = (b - a)[:, :2], (c - a)[:, :2]
    den = v0[:, 0] * v1[:, 1] - v1[:, 0] * v0[:, 1]
    keep = np.abs(den) > 1e-12  # triangles seen edge-on from the ray never cross it
    a, c_z, b_z, v0, v1, den = a[keep], c[keep, 2], b[keep, 2], v0[keep], v1[keep], den[keep]
    crossings = np.zeros((len(p), len(axes[2])), dtype=np.int64)
    for start in range(0, len(p), columns_per_chunk):
        d = p[start:start + columns_per_chunk, None, :] - a[None, :, :2]  # c F 2
        s = (d[..., 0] * v1[:, 1] - v1[:, 0] * d[..., 1]) / den
        t = (v0[:, 0] * d[..., 1] - d[..., 0] * v0[:, 1]) / den
        hit = (s >= 0) & (t >= 0) & (s + t <= 1)
        z_hit = np.where(hit, a[:, 2] + s * (b_z - a[:, 2]) + t * (c_z - a[:, 2]), np.inf)  # c F
        most = int(hit.sum(axis=1).max(initial=0))  # a column crosses few faces: count only those
        z_first = np.sort(z_hit, axis=1)[:, :most]  # c K
        crossings[start:start + len(d)] = (z_first[:, :, None] < axes[2][None, None, :]).sum(axis=1)
    res = len(axes[0])
    return (crossings % 2 == 1).reshape(res, res, len(axes[2]))


_CANONICAL_OCCUPANCY: dict[tuple[str, int], np.ndarray] = {}


def canonical_occupancy(kind: str, resolution: int = 24) -> np.ndarray:
    """Inside-voxels "R*R*R" of a kind's canonical shape, sampled exactly as ``posed_occupancies`` samples a mesh
    (thin parts such as a table top land on a different number of voxels under another sampling)."""
    key = (kind, resolution)
    if key not in _CANONICAL_OCCUPANCY:
        parts = [mesh for mesh, _ in _parts(kind)]
        _CANONICAL_OCCUPANCY[key] = posed_occupancies(parts, np.eye(3)[None], resolution)[0]
    return _CANONICAL_OCCUPANCY[key]


def pose_rotations(yaw_step: float = 5.0, tilts: tuple[float, ...] = (-10.0, 0.0, 10.0)) -> np.ndarray:
    """Rotations "P 3 3" that stand a mesh back up: a tilt about X and Z in ``tilts``, then every turn
    about Y in ``yaw_step`` degrees (a generated object leans about a world axis at whatever turn it has)."""
    def rotation(degrees: float, axis: list[int]) -> np.ndarray:
        return trimesh.transformations.rotation_matrix(math.radians(degrees), axis)[:3, :3]

    leans = [rotation(tz, [0, 0, 1]) @ rotation(tx, [1, 0, 0]) for tx in tilts for tz in tilts]
    return np.asarray([rotation(yaw, [0, 1, 0]) @ lean for yaw in np.arange(0.0, 360.0, yaw_step) for lean in leans])


def posed_occupancies(meshes: list[trimesh.Trimesh], rotations: np.ndarray, resolution: int = 24) -> np.ndarray:
    """``occupancy(meshes turned by R)`` for every R in ``rotations``, flattened: "P R*R*R" booleans.

    The mesh is voxelised once, at twice the resolution in its own frame; each pose then reads its
    grid's centres from that voxelisation (trilinear, inside where at least half), which is hundreds
    of times cheaper than voxelising per pose.
    """
    verts = np.concatenate([np.asarray(mesh.vertices, np.float64) for mesh in meshes])
    fine = 2 * resolution
    # Padded by one empty voxel on every side, so lookups outside the mesh's grid read "outside".
    padded = np.pad(occupancy(meshes, fine).astype(np.float64), 1)
    mid, half = _grid_frame(verts)
    centres = _unit_centres(resolution)
    grid = np.stack(np.meshgrid(centres, centres, centres, indexing="ij"), axis=-1).reshape(-1, 3)  # N 3
    out = np.zeros((len(rotations), len(grid)), dtype=bool)
    for i, rot in enumerate(rotations):
        turned_mid, turned_half = _grid_frame(verts @ rot.T)
        points = grid * turned_half + turned_mid  # the turned mesh's grid
        own = (points @ rot - mid) / half  # back in the mesh's frame, in [-1, 1] where it lies in the grid
        out[i] = _trilinear(padded, (own + 1.0) * 0.5 * fine + 0.5) >= 0.5
    return out


def _trilinear(grid: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Values of ``grid`` "G G G" at fractional voxel-centre indices "N 3" (centres at integers)."""
    base = np.clip(np.floor(index).astype(np.int64), 0, np.array(grid.shape) - 2)
    frac = np.clip(index - base, 0.0, 1.0)
    value = np.zeros(len(index))
    for corner in np.ndindex(2, 2, 2):
        c = np.asarray(corner)
        weight = np.prod(np.where(c == 1, frac, 1.0 - frac), axis=1)
        value += weight * grid[base[:, 0] + c[0], base[:, 1] + c[1], base[:, 2] + c[2]]
    return value


def recognise_kind(
    mesh: trimesh.Trimesh, resolution: int = 24, yaw_step: float = 5.0, tilts: tuple[float, ...] = (-10.0, 0.0, 10.0)
) -> tuple[str, dict[str, float]]:
    """The kind whose canonical shape best overlaps ``mesh`` (Y-up) in any pose: IoU after normalisation.

    A prompt says nothing about which way an object faces, and SDS leaves objects a few degrees
    off upright, so every turn about Y (``yaw_step`` degrees) after every small tilt (``tilts``)
    is tried and the best overlap counts: the score measures shape, not pose. Returns the best
    kind and the IoU with every kind, so callers can report the margin.
    """
    posed = posed_occupancies([mesh], pose_rotations(yaw_step, tilts), resolution).astype(np.float32)  # P N
    refs = np.stack([canonical_occupancy(kind, resolution) for kind in KINDS], axis=1).astype(np.float32)
    inter = posed @ refs  # P K
    union = posed.sum(axis=1, keepdims=True) + refs.sum(axis=0, keepdims=True) - inter
    iou = (inter / np.maximum(union, 1.0)).max(axis=0)
    scores = {kind: float(v) for kind, v in zip(KINDS, iou, strict=True)}
    return max(scores, key=scores.get), scores


def nearest_colour(rgb: np.ndarray) -> str:
    """The colour word closest to ``rgb`` in [0, 1] (plain RGB distance: the words are far apart)."""
    names = list(COLOURS)
    table = np.asarray([COLOURS[n] for n in names])
    return names[int(np.argmin(((table - np.asarray(rgb)[None]) ** 2).sum(-1)))]


def dominant_colour(mesh: trimesh.Trimesh) -> str:
    """The colour word most of the surface (by area) is closest to, read from its texture or colours."""
    sample = mesh.copy()
    colours = np.asarray(sample.visual.to_color().vertex_colors, dtype=np.float64)[:, :3] / 255.0
    # Area around each vertex: a third of each adjacent face's area.
    area = np.zeros(len(sample.vertices))
    np.add.at(area, sample.faces.ravel(), np.repeat(sample.area_faces / 3.0, 3))
    names = list(COLOURS)
    table = np.asarray([COLOURS[n] for n in names])
    nearest = np.argmin(((colours[:, None, :] - table[None]) ** 2).sum(-1), axis=1)
    votes = np.bincount(nearest, weights=area, minlength=len(names))
    return names[int(np.argmax(votes))]


def genus(mesh: trimesh.Trimesh) -> int:
    """Genus of the largest connected piece, from its Euler characteristic (UV seams merged first)."""
    merged = trimesh.Trimesh(np.asarray(mesh.vertices), np.asarray(mesh.faces), process=True)
    merged.merge_vertices(merge_tex=True, merge_norm=True)
    pieces = merged.split(only_watertight=False)
    largest = max(pieces, key=lambda m: len(m.faces)) if len(pieces) else merged
    return int(round(1 - largest.euler_number / 2))
