"""Fine mesh + texture field -> one textured ``trimesh.Trimesh``, the object every exporter takes.

Steps: clean the mesh (merge close vertices, drop degenerate faces and small floating pieces),
optionally decimate it to a face budget, cut a UV atlas with xatlas, rasterize the atlas in UV space
with our rasterizer to find the surface point under every texel, ask the texture field for those
points' colours, and grow colours out of the charts so bilinear filtering and mip levels never
pull in the empty background (the dark seams of a naive bake).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import trimesh
from jaxtyping import Float
from PIL import Image
from torch import Tensor

from magic3d.config_sections import BakeConfig
from magic3d.errors import RunError
from magic3d.surface import close_holes, mend_nonmanifold, surface_report, untangle, weld

ColorFn = Callable[[Float[Tensor, "N 3"]], Float[Tensor, "N 3"]]

# Texels this close to a chart get their own colour query (at the nearest point of the nearest
# triangle), so bilinear lookups at chart borders read the surface, not a copy of its neighbour.
EXACT_GUTTER_PX = 2.0


@dataclass
class CleanStats:
    merged_vertices: int
    dropped_faces: int
    dropped_components: int


def clean_mesh(
    vertices: np.ndarray, faces: np.ndarray, merge_distance: float = 1e-5, min_component_fraction: float = 0.01
) -> tuple[np.ndarray, np.ndarray, CleanStats]:
    """Merge close vertices, drop degenerate/duplicate faces, small disconnected pieces and enclosed shells.

    A shell inside the largest piece is a hollow the fine stage left in a solid: invisible, but it
    doubles as a second surface for tools that test inside/outside (booleans, physics, printing).
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    vertices = np.asarray(vertices, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64)
    n_faces = len(faces)

    def drop_degenerate(faces: np.ndarray) -> np.ndarray:
        # Only faces with a repeated vertex go, and repeats of a face: dropping thin but whole
        # faces by area would open the surface (closure matters more to every tool than a sliver).
        faces = faces[(faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 0] != faces[:, 2])]
        _, unique_rows = np.unique(np.sort(faces, axis=1), axis=0, return_index=True)
        return faces[np.sort(unique_rows)]

    faces, merged = drop_degenerate(faces), 0
    if merge_distance > 0 and len(vertices):
        faces, merged = weld(vertices, faces, merge_distance)  # the faces it collapses go next
        faces = drop_degenerate(faces)
    dropped_components = 0
    if len(faces) and min_component_fraction > 0:
        edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]]])
        graph = coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(len(vertices),) * 2)
        _, label = connected_components(graph, directed=False)
        face_label = label[faces[:, 0]]
        counts = np.bincount(face_label)
        keep = counts >= min_component_fraction * len(faces)
        largest = int(np.argmax(counts))
        keep[largest] = True
        keep &= ~_enclosed_pieces(vertices, faces, face_label, largest, len(counts))
        dropped_components = int(((counts > 0) & ~keep).sum())
        faces = faces[keep[face_label]]
    used = np.unique(faces)
    remap = np.full(len(vertices), -1, dtype=np.int64)
    remap[used] = np.arange(len(used))
    stats = CleanStats(merged, n_faces - len(faces), dropped_components)
    return vertices[used], remap[faces], stats


def _enclosed_pieces(
    vertices: np.ndarray, faces: np.ndarray, face_label: np.ndarray, largest: int, count: int
) -> np.ndarray:
    """Per piece, whether it lies inside the (closed) largest piece; all False when that one is open."""
    enclosed = np.zeros(count, dtype=bool)
    others = [c for c in np.unique(face_label) if c != largest]
    outer = trimesh.Trimesh(vertices, faces[face_label == largest], process=False)
    if not others or not outer.is_watertight:
        return enclosed
    # One vertex per piece decides: the pieces are disjoint surfaces, so a piece is either wholly
    # inside the outer surface or wholly outside it.
    probes = np.stack([vertices[faces[face_label == c][0, 0]] for c in others])
    enclosed[others] = outer.contains(probes)
    return enclosed


def decimate(vertices: np.ndarray, faces: np.ndarray, face_budget: int) -> tuple[np.ndarray, np.ndarray]:
    """Quadric decimation (fast-simplification) down to about ``face_budget`` faces."""
    if face_budget <= 0 or len(faces) <= face_budget:
        return vertices, faces
    import fast_simplification

    reduction = 1.0 - face_budget / len(faces)
    v, f = fast_simplification.simplify(vertices.astype(np.float32), faces.astype(np.int32), reduction)
    return np.asarray(v, dtype=np.float64), np.asarray(f, dtype=np.int64)


def split_faces(vertices: np.ndarray, faces: np.ndarray, max_faces: int) -> list[np.ndarray]:
    """Face indices of spatial pieces of at most ``max_faces`` faces (median cuts on the longest axis)."""
    centres = vertices[faces].mean(1)
    pieces, stack = [], [np.arange(len(faces))]
    while stack:
        idx = stack.pop()
        if max_faces <= 0 or len(idx) <= max_faces:
            pieces.append(idx)
            continue
        c = centres[idx]
        order = np.argsort(c[:, int(np.argmax(np.ptp(c, axis=0)))], kind="stable")
        stack += [idx[order[len(idx) // 2 :]], idx[order[: len(idx) // 2]]]
    return pieces


def uv_atlas(
    vertices: np.ndarray, faces: np.ndarray, texture_size: int, padding_px: int, piece_faces: int = 8_000
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """xatlas charts packed for a ``texture_size`` square: (vertex map into ``vertices``, faces, uv "V 2").

    xatlas's chart growing is superlinear in a mesh's size (a decimated 20k-face mesh: 32 s whole,
    7 s as four pieces; a 12k-face one 1.3 s whole, 0.8 s as pieces of 8k), so meshes go in as
    spatial pieces of ``piece_faces`` faces, packed into one atlas; the cuts are only more chart
    seams, which the baker's gutters handle (xatlas cuts a closed piece into charts anyway).
    """
    import xatlas

    atlas = xatlas.Atlas()
    pieces = split_faces(vertices, faces, piece_faces)
    used_per_piece = []
    for idx in pieces:
        used, local = np.unique(faces[idx], return_inverse=True)
        used_per_piece.append(used)
        atlas.add_mesh(vertices[used].astype(np.float32), local.reshape(-1, 3).astype(np.uint32))
    pack = xatlas.PackOptions()
    pack.resolution = texture_size
    pack.padding = padding_px
    pack.bilinear = True
    atlas.generate(xatlas.ChartOptions(), pack)
    if atlas.atlas_count != 1:  # several pages would overlap in one image; let xatlas size one page
        pack.resolution = 0
        atlas.generate(xatlas.ChartOptions(), pack)
    vmaps, out_faces, uvs, offset = [], [], [], 0
    for k, used in enumerate(used_per_piece):
        vmap, indices, uv = atlas[k]
        vmaps.append(used[vmap.astype(np.int64)])
        out_faces.append(indices.astype(np.int64) + offset)
        uvs.append(uv.astype(np.float64))
        offset += len(vmap)
    return np.concatenate(vmaps), np.concatenate(out_faces), np.concatenate(uvs)


def _query(color_fn: ColorFn, points: np.ndarray, chunk: int, device: torch.device) -> np.ndarray:
    out = np.empty((len(points), 3), dtype=np.float32)
    with torch.no_grad():
        for start in range(0, len(points), chunk):
            batch = torch.as_tensor(points[start : start + chunk], dtype=torch.float32, device=device)
            rgb = torch.as_tensor(color_fn(batch)).float().clamp(0.0, 1.0)
            if rgb.shape != batch.shape:
                raise RunError(f"The texture field returned shape {tuple(rgb.shape)} for {tuple(batch.shape)} points.")
            out[start : start + chunk] = rgb.cpu().numpy()
    return out


def _closest_on_triangles(p: np.ndarray, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Barycentric weights of the point of each 2D triangle closest to ``p`` (all "N 2")."""
    v0, v1, v2 = b - a, c - a, p - a
    d00, d01, d11 = (v0 * v0).sum(1), (v0 * v1).sum(1), (v1 * v1).sum(1)
    d20, d21 = (v2 * v0).sum(1), (v2 * v1).sum(1)
    den = np.where(np.abs(d00 * d11 - d01 * d01) < 1e-20, 1e-20, d00 * d11 - d01 * d01)
    wb = (d11 * d20 - d01 * d21) / den
    wc = (d00 * d21 - d01 * d20) / den
    w = np.stack([1.0 - wb - wc, wb, wc], axis=1)
    inside = (w >= 0).all(1)
    best = np.where(inside[:, None], w, 0.0)
    best_d = np.where(inside, 0.0, np.inf)
    corners = (a, b, c)
    for i, j in ((0, 1), (1, 2), (2, 0)):
        e = corners[j] - corners[i]
        t = np.clip(((p - corners[i]) * e).sum(1) / np.maximum((e * e).sum(1), 1e-20), 0.0, 1.0)
        d = ((corners[i] + t[:, None] * e - p) ** 2).sum(1)
        closer = ~inside & (d < best_d)
        cand = np.zeros_like(w)
        cand[:, i], cand[:, j] = 1.0 - t, t
        best = np.where(closer[:, None], cand, best)
        best_d = np.where(closer, d, best_d)
    return best


@dataclass
class Texels:
    """Where the atlas puts the surface: the texels a triangle covers, then the gutter texels
    within EXACT_GUTTER_PX of a chart (at the nearest point of the nearest triangle)."""

    size: int
    covered: np.ndarray  # "S S" bool, raster rows (row r is v = (r + 0.5) / size)
    gutter: np.ndarray  # "S S" bool
    points: list[np.ndarray]  # surface points "N 3": [covered, gutter]
    tri: np.ndarray  # "N" triangle of each texel, covered then gutter
    distance: np.ndarray  # "S S" texels to the nearest covered one
    nearest: tuple[np.ndarray, np.ndarray]  # its row and column

    def bary(self, uv: np.ndarray, faces: np.ndarray) -> np.ndarray:
        """Barycentric weights "N 3" of every texel's surface point in its triangle."""
        rows, cols = (np.concatenate([m[0], m[1]]) for m in zip(np.nonzero(self.covered), np.nonzero(self.gutter),
                                                                  strict=True))
        centre = np.stack([(cols + 0.5) / self.size, (rows + 0.5) / self.size], axis=1)
        corners = uv[faces[self.tri]]
        return _closest_on_triangles(centre, corners[:, 0], corners[:, 1], corners[:, 2])


def texel_samples(positions: np.ndarray, faces: np.ndarray, uv: np.ndarray, size: int,
                  device: torch.device | str = "cpu") -> Texels:
    from scipy.ndimage import distance_transform_edt

    from renderers.raster import get_rasterizer

    device = torch.device(device)
    raster = get_rasterizer(device)
    uv_t = torch.as_tensor(uv, dtype=torch.float32, device=device)
    faces_t = torch.as_tensor(faces, dtype=torch.int64, device=device)
    # Clip coordinates straight from the UVs: raster row r is v = (r + 0.5) / size.
    clip = torch.cat([uv_t * 2.0 - 1.0, torch.zeros_like(uv_t[:, :1]), torch.ones_like(uv_t[:, :1])], dim=1)
    with torch.no_grad():
        rast = raster.rasterize(clip[None], faces_t, (size, size))
        points = raster.interpolate(torch.as_tensor(positions, dtype=torch.float32, device=device), rast, faces_t)
    tri_id = (rast[0, ..., 3].round().long() - 1).cpu().numpy()
    covered = tri_id >= 0
    if not covered.any():
        raise RunError("The UV atlas covers no texels; raise bake.texture_size.")
    distance, (near_r, near_c) = distance_transform_edt(~covered, return_indices=True)
    gutter = ~covered & (distance <= EXACT_GUTTER_PX)
    rows, cols = np.nonzero(gutter)
    tri = tri_id[near_r[rows, cols], near_c[rows, cols]]
    centre = np.stack([(cols + 0.5) / size, (rows + 0.5) / size], axis=1)
    corners = uv[faces[tri]]
    w = _closest_on_triangles(centre, corners[:, 0], corners[:, 1], corners[:, 2])
    surface = (w[:, :, None] * positions[faces[tri]]).sum(1)
    return Texels(size, covered, gutter, [points[0].cpu().numpy()[covered], surface],
                  np.concatenate([tri_id[covered], tri]), distance, (near_r, near_c))


def paint(texels: Texels, values: np.ndarray, dilate_px: int, background: np.ndarray | None = None) -> np.ndarray:
    """The "S S C" uint8 image (row 0 at the top, v = 0 at the bottom) of per-texel ``values`` in
    [0, 1] (covered, then gutter texels), grown ``dilate_px`` out of the charts so bilinear lookups
    and mip levels never reach the background; the rest is ``background`` (default: the mean)."""
    size, covered, gutter = texels.size, texels.covered, texels.gutter
    image = np.zeros((size, size, values.shape[1]), dtype=np.float32)
    n_covered = int(covered.sum())
    image[covered] = values[:n_covered]
    image[gutter] = values[n_covered:]
    filled = covered | gutter
    near_r, near_c = texels.nearest
    if dilate_px > 0:
        grow = ~filled & (texels.distance <= dilate_px)
        image[grow] = image[near_r[grow], near_c[grow]]  # nearest chart texel: exact up to a few mip levels
        filled |= grow
    # The rest takes the mean so the smallest mip levels average to the object's colour.
    image[~filled] = image[covered].mean(0) if background is None else background
    return (np.clip(image[::-1], 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def bake_texture(
    positions: np.ndarray, faces: np.ndarray, uv: np.ndarray, color_fn: ColorFn, cfg: BakeConfig,
    device: torch.device | str = "cpu", texels: Texels | None = None,
) -> np.ndarray:
    """The "S S 3" uint8 base-colour image (row 0 at the top, v = 0 at the bottom) of ``color_fn`` over the atlas."""
    texels = texels or texel_samples(positions, faces, uv, cfg.texture_size, device)
    colours = [_query(color_fn, pts, cfg.query_chunk, torch.device(device)) if len(pts) else np.zeros((0, 3), np.float32)
               for pts in texels.points]
    return paint(texels, np.concatenate(colours), cfg.dilate_px)


def _as_numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)


def bake(
    vertices: Float[Tensor, "V 3"] | np.ndarray, faces, color_fn: ColorFn, cfg: BakeConfig | None = None,
    timings: dict[str, float] | None = None,
) -> trimesh.Trimesh:
    """Clean, decimate, unwrap and bake ``color_fn`` into a textured mesh with an explicit PBR material.

    ``color_fn(points "N 3") -> "N 3"`` in [0, 1] is called under ``torch.no_grad`` on ``vertices``' device.
    ``timings``, when given, receives the seconds each step took (clean, decimate, atlas, texture).
    """
    cfg = cfg or BakeConfig()
    timings = timings if timings is not None else {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = now - clock
        clock = now

    if not 16 <= cfg.texture_size <= 8192:
        raise RunError(f"bake.texture_size must be between 16 and 8192, not {cfg.texture_size}.")
    device = vertices.device if isinstance(vertices, Tensor) else torch.device("cpu")
    v, f, _ = clean_mesh(_as_numpy(vertices), _as_numpy(faces), cfg.merge_distance, cfg.min_component_fraction)
    if len(f) == 0:
        raise RunError("The extracted mesh has no faces left after clean-up; the object is empty, "
                       "train the coarse stage longer.")
    lap("clean")
    full = (v, f)
    v, f = decimate(v, f, cfg.face_budget)
    v, f = close_holes(v, f)  # merging and decimation can leave small holes: the asset is closed
    v, f = mend_nonmanifold(v, f)  # and decimation can collapse two sheets onto one edge
    v, crossings = untangle(v, f)  # and decimation can fold a thin spot through the far side
    report = surface_report(v, f)
    lap("decimate")
    # Normals of the unsplit mesh, so shading stays smooth across UV seams.
    normals = np.asarray(trimesh.Trimesh(v, f, process=False).vertex_normals)
    vmap, uv_faces, uv = uv_atlas(v, f, cfg.texture_size, cfg.padding_px, cfg.atlas_piece_faces)
    positions = v[vmap]
    lap("atlas")
    texels = texel_samples(positions, uv_faces, uv, cfg.texture_size, device)
    pixels = bake_texture(positions, uv_faces, uv, color_fn, cfg, device, texels)
    lap("texture")
    normal_map = None
    if cfg.normal_map and len(f) < len(full[1]):  # decimation removed detail: the map keeps it
        from magic3d.normal_map import normal_map_values

        encoded = normal_map_values(np.concatenate(texels.points), texels.tri, texels.bary(uv, uv_faces), positions,
                                    uv_faces, uv, normals[vmap], *full)
        normal_map = Image.fromarray(paint(texels, encoded, cfg.dilate_px, np.array([0.5, 0.5, 1.0])))
        lap("normal_map")
    material = trimesh.visual.material.PBRMaterial(
        name="material",
        normalTexture=normal_map,
        baseColorTexture=Image.fromarray(pixels),
        baseColorFactor=np.array([255, 255, 255, 255], dtype=np.uint8),
        roughnessFactor=float(cfg.roughness),
        metallicFactor=float(cfg.metallic),
    )
    mesh = trimesh.Trimesh(positions, uv_faces, vertex_normals=normals[vmap], process=False)
    mesh.visual = trimesh.visual.TextureVisuals(uv=uv, material=material)
    # Of the welded surface, before UV seams split it.
    mesh.metadata["surface"] = {**report.as_dict(), "self_intersections": crossings}
    return mesh
