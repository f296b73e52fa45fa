"""DMTet: a deformable tetrahedral grid with a signed distance per vertex, meshed by marching tetrahedra.

Grid size: ``resolution`` N counts as threestudio's tet grids do (``load/tets/{N}_tets.npz``,
made with Quartet; the ``isosurface_resolution`` of its Magic3D configs): an N grid has N/2
lattice steps per side of its box. threestudio's 64 grid has 36,562 vertices and
192,492 tetrahedra, about 33^3 and 6 * 32^3. Here an N grid is a cube lattice of N/2 cells per
side, (N/2 + 1)^3 vertices and 6 (N/2)^3 tetrahedra (35,937 and 196,608 at 64), so N must be even.
The reference's grid spans the coarse object's bounding box; this one spans [-bound, bound]^3.

Each cell is cut into six tetrahedra around its main diagonal (Kuhn/Freudenthal). Every cell uses
the same diagonal direction, so the triangulated faces of neighbouring cells coincide and the
tetrahedra tile space without cracks.

Signs: ``sdf < 0`` is inside. Surface vertices sit on the grid edges whose ends differ in sign,
placed by linear interpolation of the SDF (differentiable w.r.t. both the SDF and the deformed
vertex positions). One vertex per crossed grid edge, shared by every tetrahedron around that
edge, which is what makes the mesh watertight. Boundary vertices of the grid are always outside
so the surface never leaves the grid open.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from itertools import permutations

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn

from magic3d.fields.sight import HALF_LIGHT_DEPTH, SEALED_HOLE_WIDTH, fill_hidden_space, sight_depth
from magic3d.fields.tunnels import cut_handles, seal_tunnels

# The six edges of a tetrahedron as pairs of its local vertex indices.
TET_EDGES = ((0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3))


def grid_cells(resolution: int) -> int:
    """Cells per side of a tet grid of ``resolution`` (the reference's N: N/2 cells per side)."""
    if resolution < 2 or resolution % 2:
        raise ValueError(f"tet grid resolution must be a positive even number (N/2 cells per side), not {resolution}")
    return resolution // 2


def tet_grid(resolution: int, bound: float = 1.0) -> tuple[Float[Tensor, "V 3"], Int[Tensor, "T 4"]]:
    """Lattice vertices in [-bound, bound]^3 and the tetrahedra (6 per cell, positively oriented).

    ``resolution`` is the reference's grid size N (see the module docstring): N/2 cells per side.
    """
    cells = grid_cells(resolution)
    n = cells + 1
    axis = torch.linspace(-bound, bound, n, device="cpu")  # the grid is built once on the host, then moved as buffers
    gx, gy, gz = torch.meshgrid(axis, axis, axis, indexing="ij")
    vertices = torch.stack([gx, gy, gz], dim=-1).reshape(-1, 3)

    def vid(i: Tensor, j: Tensor, k: Tensor) -> Tensor:
        return (i * n + j) * n + k

    c = torch.arange(cells, device="cpu")
    ci, cj, ck = (x.reshape(-1) for x in torch.meshgrid(c, c, c, indexing="ij"))
    unit = torch.eye(3, dtype=torch.long, device="cpu")
    tets = []
    # Each permutation of the axes walks from corner (0,0,0) to (1,1,1) one axis at a time.
    for perm in permutations(range(3)):
        corners, offset = [vid(ci, cj, ck)], torch.zeros(3, dtype=torch.long, device="cpu")
        for axis_index in perm:
            offset = offset + unit[axis_index]
            corners.append(vid(ci + offset[0], cj + offset[1], ck + offset[2]))
        tets.append(torch.stack(corners, dim=-1))
    tets = torch.cat(tets, dim=0)
    # Positive orientation for every tet (odd permutations come out negative): swap two corners.
    p = vertices[tets]
    negative = torch.linalg.det(p[:, 1:] - p[:, :1]) < 0
    tets[negative] = tets[negative][:, [0, 2, 1, 3]]
    return vertices, tets


def _triangle_table() -> tuple[Tensor, Tensor]:
    """Per inside-pattern (4 bits), up to two triangles given as local edge indices (-1 = none).

    Winding is fixed combinatorially for a positively oriented tetrahedron (``tet_grid`` makes all
    of them so): each triangle is wound counter-clockwise seen from outside, decided once on a
    reference tetrahedron. Deciding it from the deformed geometry instead fails on the
    near-degenerate triangles that appear where the SDF is ~0 at a grid vertex.
    """
    ref = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=torch.float64, device="cpu")
    edge = {pair: i for i, pair in enumerate(TET_EDGES)}

    def e(a: int, b: int) -> int:
        return edge[(min(a, b), max(a, b))]

    # A lookup table built once on the host; callers move it with the grid's buffers.
    table = torch.full((16, 2, 3), -1, dtype=torch.long, device="cpu")
    for code in range(16):
        inside = [v for v in range(4) if code >> v & 1]
        outside = [v for v in range(4) if not code >> v & 1]
        if len(inside) in (1, 3):
            lone = inside[0] if len(inside) == 1 else outside[0]
            others = [v for v in range(4) if v != lone]
            table[code, 0] = torch.tensor([e(lone, o) for o in others], device="cpu")
        elif len(inside) == 2:
            (a, b), (c, d) = inside, outside
            # The crossing points form the planar quad ac-ad-bd-bc, split along ac-bd.
            table[code, 0] = torch.tensor([e(a, c), e(a, d), e(b, d)], device="cpu")
            table[code, 1] = torch.tensor([e(a, c), e(b, d), e(b, c)], device="cpu")
        if inside and outside:
            outward = ref[outside].mean(0) - ref[inside].mean(0)
            for k in range(2 if len(inside) == 2 else 1):
                p = torch.stack([ref[list(TET_EDGES[i])].mean(0) for i in table[code, k]])
                if torch.dot(torch.linalg.cross(p[1] - p[0], p[2] - p[0]), outward) < 0:
                    table[code, k] = table[code, k][[0, 2, 1]]
    return table


TRIANGLE_TABLE = _triangle_table()


def marching_tetrahedra(
    vertices: Float[Tensor, "V 3"], tets: Int[Tensor, "T 4"], sdf: Float[Tensor, " V"]
) -> tuple[Float[Tensor, "M 3"], Int[Tensor, "F 3"]]:
    """The zero level set of ``sdf`` as a triangle mesh with outward-facing (counter-clockwise) faces.

    ``tets`` must be positively oriented in the undeformed grid (``tet_grid``'s are); the winding
    then stays consistent across the whole mesh however the vertices are deformed.
    """
    device = vertices.device
    occ = sdf < 0
    # Each tet's 4-bit inside code, one corner column at a time: gathering the (T, 4) corners
    # as one bool index costs ~15x as much on a CPU, and the full grid is walked every step.
    occ8 = occ.to(torch.uint8)
    code = occ8.index_select(0, tets[:, 0])
    for corner in range(1, 4):
        code = code + (occ8.index_select(0, tets[:, corner]) << corner)
    crossing = torch.nonzero((code > 0) & (code < 15)).squeeze(1)
    tets, code = tets.index_select(0, crossing), code.index_select(0, crossing).long()
    if tets.shape[0] == 0:
        return vertices.new_zeros(0, 3), torch.zeros(0, 3, dtype=torch.long, device=device)

    local = torch.tensor(TET_EDGES, device=device)
    ends = tets[:, local]  # T 6 2
    lo, hi = ends.min(-1).values, ends.max(-1).values
    cut = occ[lo] != occ[hi]
    keys = lo[cut] * vertices.shape[0] + hi[cut]
    unique_keys, inverse = torch.unique(keys, return_inverse=True)
    edge_vertex = torch.full_like(lo, -1)
    edge_vertex[cut] = inverse

    a, b = unique_keys // vertices.shape[0], unique_keys % vertices.shape[0]
    sa, sb = sdf[a].unsqueeze(-1), sdf[b].unsqueeze(-1)
    # Where the linear interpolant of the SDF crosses zero; sa and sb have opposite signs.
    weight = sa / (sa - sb)
    surface = vertices[a] + weight * (vertices[b] - vertices[a])

    table = TRIANGLE_TABLE.to(device)[code]  # T 2 3
    has = table[..., 0] >= 0
    tri_edges = table[has]  # F 3 local edge ids
    owner = torch.arange(tets.shape[0], device=device).unsqueeze(1).expand(-1, 2)[has]
    faces = torch.gather(edge_vertex[owner], 1, tri_edges)

    return surface, faces


def otsu_threshold(values: Float[Tensor, " N"], bins: int = 256) -> float:
    """The split of ``values`` that maximises the between-class variance (Otsu's rule)."""
    lo, hi = float(values.min()), float(values.max())
    if hi - lo < 1e-12:
        return hi
    hist = torch.histc(values.double(), bins=bins, min=lo, max=hi)
    centres = lo + (torch.arange(bins, dtype=torch.float64, device=hist.device) + 0.5) * (hi - lo) / bins
    w0 = hist.cumsum(0)
    m0 = (hist * centres).cumsum(0)
    total, mean_total = w0[-1], m0[-1]
    w1 = total - w0
    between = (mean_total * w0 / total - m0) ** 2 / (w0 * w1).clamp(min=1e-12) * total
    between[w1 <= 0] = -1.0
    k = int(between.argmax())
    return lo + (k + 1) * (hi - lo) / bins  # upper edge of the last bin of the lower class


def auto_density_threshold(density: Float[Tensor, " N"]) -> float:
    """Density level separating occupied space from empty space, chosen from the distribution alone.

    Rule: Otsu's split of ``log(min(density, q) + q / 4)`` over the grid vertices, where ``q``
    is the 99.9th percentile of the density. Dividing through by ``q`` shows the rule is
    scale-invariant (NeRF densities of different runs differ by orders of magnitude); the
    percentile ignores the few spikes a NeRF grows; the log keeps weakly dense parts of an
    object (density 20 next to a core at 200) on the occupied side, and the ``q / 4`` offset
    stops the near-zero densities of empty space, which spread over many decades in log space,
    from pulling the split down into the haze. For a field that is 0 outside and ``q`` inside
    the split is ~0.31 q. It is kept within 5%..95% of the log range so a nearly empty or
    nearly full field still yields a surface.
    """
    d = density.detach().float().flatten().clamp(min=0.0)
    k = max(1, int(round(0.999 * d.numel())))
    q = float(d.kthvalue(k).values) if d.numel() > 1 else float(d.max())
    if q <= 0.0:
        q = float(d.max())
    if q <= 1e-12 or float(d.max() - d.min()) <= 1e-12 * max(q, 1.0):
        raise ValueError("the density is constant over the grid, so there is no surface to extract")
    values = torch.log(d.clamp(max=q) + 0.25 * q)
    lo, hi = float(values.min()), float(values.max())
    split = min(max(otsu_threshold(values), lo + 0.05 * (hi - lo)), lo + 0.95 * (hi - lo))
    return math.exp(split) - 0.25 * q


class DMTet(nn.Module):
    """SDF and bounded deformation on a tet grid; ``extract()`` gives the current mesh.

    ``resolution`` is the reference's grid size N (see the module docstring): N/2 cells per side.
    """

    def __init__(self, resolution: int, bound: float = 1.0) -> None:
        super().__init__()
        vertices, tets = tet_grid(resolution, bound)
        self.resolution, self.bound = resolution, bound
        self.cells = grid_cells(resolution)  # lattice cells per side
        self.cell = 2.0 * bound / self.cells
        self.register_buffer("grid_vertices", vertices, persistent=False)
        self.register_buffer("tets", tets, persistent=False)
        boundary = (vertices.abs() >= bound - 1e-6).any(-1)
        self.register_buffer("boundary", boundary, persistent=False)
        self.sdf = nn.Parameter(vertices.new_ones(vertices.shape[0]))
        self.deform = nn.Parameter(vertices.new_zeros(vertices.shape[0], 3))

    def vertices(self) -> Float[Tensor, "V 3"]:
        # tanh keeps every vertex within half a cell of its lattice point, so tets cannot invert badly.
        return self.grid_vertices + 0.5 * self.cell * torch.tanh(self.deform)

    def effective_sdf(self) -> Float[Tensor, " V"]:
        return torch.where(self.boundary, self.sdf.abs() + 1e-4, self.sdf)

    def extract(self) -> tuple[Float[Tensor, "M 3"], Int[Tensor, "F 3"]]:
        return marching_tetrahedra(self.vertices(), self.tets, self.effective_sdf())

    @torch.no_grad()
    def extract_repaired(
        self, seal_width: float, cut_width: float = 0.0
    ) -> tuple[Float[Tensor, "M 3"], Int[Tensor, "F 3"], dict[str, int]]:
        """The mesh with tunnels up to ``seal_width`` (world units) wide sealed and handles whose
        bar is up to ``cut_width`` thick cut (see ``magic3d.fields.tunnels``), and how many of each
        (``sealed_tunnels``, ``cut_handles``); for the final mesh, not for training."""
        sdf = self.effective_sdf()
        sdf, sealed = seal_tunnels(sdf, self.tets, self.cells, self._cells_for(seal_width), 0.05 * self.cell)
        sdf, cut = cut_handles(sdf, self.tets, self.cells, self._cells_for(cut_width), 0.05 * self.cell)
        return (*marching_tetrahedra(self.vertices(), self.tets, sdf), {"sealed_tunnels": sealed, "cut_handles": cut})

    def _cells_for(self, width: float) -> int:
        """Closing or opening iterations that span ``width``: each reaches one cell on either side."""
        return max(1, round(0.5 * width / self.cell)) if width > 0 else 0

    @torch.no_grad()
    def init_from_sdf(self, sdf_fn: Callable[[Tensor], Tensor]) -> None:
        """Set the SDF from a function of points (world units) and reset the deformation."""
        self.sdf.copy_(sdf_fn(self.grid_vertices).reshape(-1).to(self.sdf))
        self.deform.zero_()

    @torch.no_grad()
    def init_from_density(
        self, density_fn: Callable[[Tensor], Tensor], threshold: float | None = None, chunk: int = 65536,
        keep_largest: bool = False,
        fill_hidden: bool = False,
        sight: Float[Tensor, "D 3"] | None = None,
    ) -> float:
        """Set the SDF from a density field; returns the level used: a density (automatic when
        ``threshold`` is None) or, with ``sight`` (directions towards the cameras), the optical
        depth behind which no camera sees (``magic3d.fields.sight``): the surface the renders show.

        SDF = (level - value) / slope (the value a density or a sight depth), where slope is the median change per unit
        length across the grid edges the surface cuts: near the surface the SDF then reads
        roughly as a distance in world units, whatever the density's scale, so one SDF learning
        rate suits any coarse field. Farther away it is the distance to the occupied set (see
        ``_distance_sdf``); ``keep_largest`` drops every occupied piece but the largest, and
        ``fill_hidden`` fills hollows no axis-aligned line of sight reaches (see ``fill_hidden_space``).
        """
        points = self.grid_vertices
        density = torch.cat([density_fn(points[i : i + chunk]).reshape(-1).float()
                             for i in range(0, points.shape[0], chunk)])
        if not torch.isfinite(density).all():
            raise ValueError("the density field returned non-finite values at the tet grid vertices")
        if sight is not None:
            n = self.cells + 1
            thr = HALF_LIGHT_DEPTH
            raw = thr - sight_depth(density.view(n, n, n), self.bound, sight).reshape(-1)
        else:
            thr = auto_density_threshold(density) if threshold is None else float(threshold)
            raw = thr - density
        inside = (raw < 0)[self.tets].sum(-1)
        crossing = self.tets[(inside > 0) & (inside < 4)]  # only these hold surface edges (saves GBs at 128^3)
        edges = crossing[:, list(TET_EDGES)].reshape(-1, 2)
        cut = (raw[edges[:, 0]] < 0) != (raw[edges[:, 1]] < 0)
        if cut.any():
            e = edges[cut]
            length = (points[e[:, 0]] - points[e[:, 1]]).norm(dim=-1)
            slope = float(((raw[e[:, 0]] - raw[e[:, 1]]).abs() / length).median())
        else:
            slope = 1.0
        linear = raw / max(slope, 1e-8)
        self.sdf.copy_(self._distance_sdf(linear, keep_largest, fill_hidden).to(self.sdf))
        self.deform.zero_()
        return thr

    def _distance_sdf(self, linear: Float[Tensor, " V"], keep_largest: bool, fill_hidden: bool) -> Float[Tensor, " V"]:
        """A true distance away from the surface, optionally for the largest piece only, hollows filled.

        The density's own slope only reads as a distance next to the surface: in a coarse NeRF's
        haze, vertices just below the threshold get SDF values near zero, and the fine stage's
        first updates flip them into floaters. Past one cell the SDF is therefore the Euclidean
        distance to the occupied (or empty) set; next to the surface the interpolated value
        keeps its sub-cell accuracy.
        """
        from scipy import ndimage

        n = self.cells + 1  # lattice vertices per side
        occupied = (linear < 0).reshape(n, n, n).cpu().numpy()
        if keep_largest:
            labels, count = ndimage.label(occupied)  # 6-connected pieces
            if count > 1:
                sizes = np.bincount(labels.ravel())[1:]
                occupied = labels == 1 + int(sizes.argmax())
        if fill_hidden:
            occupied = fill_hidden_space(occupied, seal=max(1, round(0.5 * SEALED_HOLE_WIDTH / self.cell)))
        outside = ndimage.distance_transform_edt(~occupied) if occupied.any() else np.full(occupied.shape, n)
        inside = ndimage.distance_transform_edt(occupied)
        cells = np.where(occupied, 0.5 - inside, outside - 0.5).reshape(-1)
        far = torch.from_numpy(cells).to(linear) * self.cell
        kept = torch.from_numpy(occupied.reshape(-1)).to(linear.device) == (linear < 0)
        near = kept & (far.abs() < self.cell)
        return torch.where(near, linear.clamp(-self.cell, self.cell), far).clamp(-self.bound, self.bound)


def mesh_edges(faces: Int[Tensor, "F 3"]) -> tuple[Int[Tensor, "E 2"], Int[Tensor, "F 3"]]:
    """Unique undirected edges and, for each face corner k, the edge (k, k+1)."""
    half = torch.stack([faces, faces.roll(-1, dims=1)], dim=-1).reshape(-1, 2)
    lo, hi = half.min(-1).values.long(), half.max(-1).values.long()
    # One int64 key per edge: a 1-D unique is ~10x faster than unique over rows (it ran twice in
    # every fine step), sorts the same way, and needs no vertex count (no host round trip).
    keys, inverse = torch.unique(lo * (1 << 31) + hi, return_inverse=True)
    return torch.stack([keys >> 31, keys & ((1 << 31) - 1)], dim=-1), inverse.view(-1, 3)


Edges = tuple[Int[Tensor, "E 2"], Int[Tensor, "F 3"]]  # what mesh_edges returns


def normal_consistency(vertices: Float[Tensor, "V 3"], faces: Int[Tensor, "F 3"],
                       edges: Edges | None = None) -> Float[Tensor, ""]:
    """Mean (1 - cos) between the normals of faces sharing an edge: penalises creases and noise.
    ``edges`` is ``mesh_edges(faces)`` when the caller has it already."""
    if faces.shape[0] < 2:
        return vertices.sum() * 0.0
    p = vertices[faces]
    normals = F.normalize(torch.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0], dim=-1), dim=-1, eps=1e-12)
    _, face_edge = edges if edges is not None else mesh_edges(faces)
    edge_id = face_edge.reshape(-1)
    face_id = torch.arange(faces.shape[0], device=faces.device).repeat_interleave(3)
    order = edge_id.argsort(stable=True)
    edge_sorted, face_sorted = edge_id[order], face_id[order]
    # In a manifold mesh each edge appears twice, so consecutive entries pair up the two faces.
    pair = edge_sorted[1:] == edge_sorted[:-1]
    f0, f1 = face_sorted[:-1][pair], face_sorted[1:][pair]
    if f0.numel() == 0:
        return vertices.sum() * 0.0
    return (1.0 - (normals[f0] * normals[f1]).sum(-1)).mean()


def laplacian_smoothness(vertices: Float[Tensor, "V 3"], faces: Int[Tensor, "F 3"],
                         edges: Edges | None = None) -> Float[Tensor, ""]:
    """Mean squared distance from each vertex to the average of its neighbours (uniform Laplacian).
    ``edges`` is ``mesh_edges(faces)`` when the caller has it already."""
    if faces.shape[0] == 0:
        return vertices.sum() * 0.0
    unique, _ = edges if edges is not None else mesh_edges(faces)
    both = torch.cat([unique, unique.flip(-1)], dim=0)
    total = torch.zeros_like(vertices).index_add(0, both[:, 0], vertices[both[:, 1]])
    degree = torch.zeros(vertices.shape[0], device=vertices.device, dtype=vertices.dtype)
    degree = degree.index_add(0, both[:, 0], torch.ones_like(both[:, 0], dtype=vertices.dtype))
    used = degree > 0
    delta = vertices[used] - total[used] / degree[used].unsqueeze(-1)
    return (delta**2).sum(-1).mean()


__all__ = [
    "DMTet", "auto_density_threshold", "grid_cells", "laplacian_smoothness", "marching_tetrahedra", "mesh_edges",
    "normal_consistency", "otsu_threshold", "tet_grid",
]

