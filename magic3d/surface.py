"""The topology every baked surface must have: closed (each edge shared by exactly two faces,
in opposite directions), in one piece, with the genus of its shape.

Marching tets gives a closed surface. ``weld`` merges vertices closer than ``bake.merge_distance``
only where the surface stays a manifold: merging by position alone pinched a table where two
vertices of different sheets fell in one cell (2 non-manifold edges, 3 non-manifold vertices).
Decimation can still tear a thin spot, leaving small holes (a 5-edge hole of 1e-5 m edges on a
mushroom); ``close_holes`` fills every such loop, so closure is a property of the bake rather than
of a lucky asset. It can also collapse two sheets onto one edge: fast-simplification's default
aggressiveness left edges of three or four faces in 22 of 31 amortized meshes decimated to 5,000
faces. ``mend_nonmanifold`` cuts the faces around each such edge out and closes the holes.

``intersecting_pairs`` finds triangle pairs that pass through each other: quadric decimation can
fold a thin spot through the far side. ``untangle`` relaxes the vertices around each such pair
until none is left, so "no self-intersections" is also a property of the bake. The check costs
1.1-1.8 s on a 100k-face torus on the 2-core build machine (≤ 0.08 s at the 6-13k faces of the
built-in prior's assets), which is why it is not part of ``SurfaceReport``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class SurfaceReport:
    watertight: bool  # every edge has exactly two faces, oriented consistently
    bodies: int  # connected pieces
    genus: int  # holes through the object (torus 1), from the Euler characteristic; -1 when open
    boundary_edges: int
    nonmanifold_edges: int

    def as_dict(self) -> dict[str, int | bool]:
        return asdict(self)


def directed_edges(faces: np.ndarray) -> np.ndarray:
    """"3F 2": each face's edges in its winding order."""
    return np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])


def boundary_loops(faces: np.ndarray) -> list[list[int]]:
    """Vertex loops around the holes, each in the direction its faces run along it."""
    edges = directed_edges(faces)
    undirected = np.sort(edges, axis=1)
    _, inverse, counts = np.unique(undirected, axis=0, return_inverse=True, return_counts=True)
    open_edges = edges[counts[inverse.reshape(-1)] == 1]
    following: dict[int, list[int]] = {}
    for a, b in open_edges.tolist():
        following.setdefault(a, []).append(b)
    loops = []
    while following:
        start = next(iter(following))
        loop, here = [start], start
        while True:
            nexts = following.get(here)
            if not nexts:
                break
            step = nexts.pop()
            if not nexts:
                del following[here]
            if step == start:
                break
            loop.append(step)
            here = step
        if len(loop) >= 3:
            loops.append(loop)
    return loops


def weld(vertices: np.ndarray, faces: np.ndarray, distance: float) -> tuple[np.ndarray, int]:
    """``faces`` with vertices closer than ``distance`` (same cell of a ``distance`` grid) merged
    wherever the merge keeps every edge on at most two faces, makes no face twice and pinches no
    two closed fans together, and how many merges were made. Faces a merge collapses (an edge
    shorter than ``distance``) come back with a repeated index for the caller to drop.

    A triangle soup welds whole (its copies' fans are open); two vertices of different sheets of a
    closed surface, or a short edge whose ends share a third neighbour off its two faces, stay apart.
    """
    faces = np.array(faces, dtype=np.int64)
    keys = np.round(np.asarray(vertices) / distance).astype(np.int64)
    _, cell, counts = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
    cell = cell.reshape(-1)
    shared = np.flatnonzero(counts[cell] > 1)
    if len(shared) == 0:
        return faces, 0
    incident: dict[int, set[int]] = {int(v): set() for v in shared}
    for f, v in zip(*np.nonzero(np.isin(faces, shared)), strict=True):
        incident[int(faces[f, v])].add(int(f))

    def around(a: int) -> Counter:  # neighbour -> faces on the edge (a, neighbour)
        return Counter(int(w) for f in incident[a] for w in faces[f] if w != a)

    def collapsed_by(a: int, b: int) -> list[int] | None:
        """The faces merging b into a collapses, or None where the merge is refused."""
        ca, cb = around(a), around(b)
        both = [f for f in incident[a] if b in faces[f]]
        lost = Counter(int(w) for f in both for w in faces[f] if w not in (a, b))
        if any(ca[w] + cb[w] - 2 * lost[w] > 2 for w in (ca.keys() | cb.keys()) - {a, b}):
            return None
        if not both and all(c == 2 for c in ca.values()) and all(c == 2 for c in cb.values()):
            return None  # two closed fans: one vertex would join two sheets at a point
        kept_a = {frozenset(faces[f].tolist()) for f in incident[a] if f not in both}
        if any(frozenset(a if w == b else int(w) for w in faces[f]) in kept_a for f in incident[b] if f not in both):
            return None
        return both

    merged = 0
    order = np.argsort(cell[shared], kind="stable")
    groups = np.split(shared[order], np.flatnonzero(np.diff(cell[shared][order])) + 1)
    for group in groups:
        reps: list[int] = []
        for b in map(int, group):
            for a in reps:
                both = collapsed_by(a, b)
                if both is not None:
                    break
            else:
                reps.append(b)
                continue
            for f in incident.pop(b):
                faces[f][faces[f] == b] = a
                incident[a].add(f)
            for f in both:  # gone from every fan it was in
                for w in set(faces[f].tolist()):
                    incident.get(w, set()).discard(f)
            merged += 1
    return faces, merged


def close_holes(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``faces`` with every boundary loop filled by a fan around a new vertex at its centroid,
    wound so the fill continues the surrounding orientation; a closed mesh comes back unchanged."""
    loops = boundary_loops(faces)
    if not loops:
        return vertices, faces
    new_vertices, new_faces = [vertices], [faces]
    index = len(vertices)
    for loop in loops:
        ring = np.asarray(loop, dtype=np.int64)
        new_vertices.append(vertices[ring].mean(0, keepdims=True))
        # The faces run a -> b along the hole; the fill must run b -> a there.
        nxt = np.roll(ring, -1)
        new_faces.append(np.stack([nxt, ring, np.full_like(ring, index)], axis=1))
        index += 1
    return np.concatenate(new_vertices), np.concatenate(new_faces)


def edge_counts(faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct undirected edges "E 2" (sorted) and how many faces share each "E"."""
    edges = np.sort(directed_edges(np.asarray(faces, dtype=np.int64)), axis=1)
    keys, counts = np.unique(edges[:, 0] * (1 << 31) + edges[:, 1], return_counts=True)  # one int64 a row
    return np.stack([keys >> 31, keys & ((1 << 31) - 1)], axis=1), counts


def mend_nonmanifold(vertices: np.ndarray, faces: np.ndarray, rounds: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """``faces`` without edges of more than two faces: every face touching such an edge's ends is
    removed and the holes closed (``close_holes``), again while any is left, up to ``rounds`` times."""
    faces = np.asarray(faces, dtype=np.int64)
    for _ in range(rounds):
        edges, counts = edge_counts(faces)
        ends = np.unique(edges[counts > 2])
        if not len(ends):
            break
        vertices, faces = close_holes(vertices, faces[~np.isin(faces, ends).any(axis=1)])
    return vertices, faces


def surface_report(vertices: np.ndarray, faces: np.ndarray) -> SurfaceReport:
    """Closure, pieces and genus of a welded triangle mesh."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    faces = np.asarray(faces, dtype=np.int64)
    edges = directed_edges(faces)
    _, counts = edge_counts(faces)
    directed_unique = len(np.unique(edges, axis=0)) == len(edges)  # no edge run twice the same way
    boundary, nonmanifold = int((counts == 1).sum()), int((counts > 2).sum())
    watertight = boundary == 0 and nonmanifold == 0 and directed_unique
    used = np.unique(faces)
    graph = coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(len(vertices),) * 2)
    _, label = connected_components(graph, directed=False)
    bodies = len(np.unique(label[used]))
    euler = len(used) - len(counts) + len(faces)
    genus = (2 * bodies - euler) // 2 if watertight else -1
    return SurfaceReport(watertight, bodies, int(genus), boundary, nonmanifold)


def self_intersections(vertices: np.ndarray, faces: np.ndarray) -> int:
    """Number of pairs of triangles that share no vertex and intersect; 0 for a surface that does
    not pass through itself."""
    return len(intersecting_pairs(vertices, faces))


def intersecting_pairs(vertices: np.ndarray, faces: np.ndarray, chunk: int = 1 << 21) -> np.ndarray:
    """"P 2" face indices of the pairs of triangles that share no vertex and intersect (touching
    within 1e-10 of the mesh's size counts), each pair once.

    Broad phase: each triangle's bounding box is entered in the cells of a uniform grid (cells the
    size of the median triangle, grown until there are at most 16 entries per triangle), pairs in
    a cell with overlapping boxes are kept once (in the cell of their overlap's low corner).
    Narrow phase: the 17-axis separating-axis test (both normals, the nine edge-edge cross
    products, the six in-plane edge normals that coplanar pairs need), vectorised over pairs.
    """
    v = np.asarray(vertices, dtype=np.float64)
    f = np.asarray(faces, dtype=np.int64)
    if len(f) < 2:
        return np.zeros((0, 2), dtype=np.int64)
    tri = v[f]  # "F 3 3"
    lo, hi = tri.min(1), tri.max(1)
    origin = lo.min(0)
    scale = float(np.linalg.norm(hi.max(0) - origin)) or 1.0
    size = max(float(np.median((hi - lo).max(1))), scale * 1e-6)
    while True:
        first = np.floor((lo - origin) / size).astype(np.int64)
        last = np.floor((hi - origin) / size).astype(np.int64)
        per_face = (last - first + 1).prod(1)
        if per_face.sum() <= 16 * len(f):
            break
        size *= 2.0
    dims = last.max(0) + 1
    # Grid entries: (cell key, face), one per cell each face's box covers.
    face = np.repeat(np.arange(len(f)), per_face)
    local = np.arange(len(face)) - np.repeat(np.cumsum(per_face) - per_face, per_face)
    extent = (last - first + 1)[face]
    cell = first[face] + np.stack(
        [local % extent[:, 0], (local // extent[:, 0]) % extent[:, 1], local // (extent[:, 0] * extent[:, 1])], 1
    )
    key = (cell[:, 0] * dims[1] + cell[:, 1]) * dims[2] + cell[:, 2]
    order = np.argsort(key, kind="stable")
    key, face = key[order], face[order]
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    ends = np.repeat(np.r_[starts[1:], len(key)], np.diff(np.r_[starts, len(key)]))
    partners = ends - np.arange(len(key)) - 1  # later entries in the same cell
    eps = 1e-10 * scale
    found, position, done = [], 0, np.cumsum(partners)
    while position < len(key):
        # Left entries whose pairs fit in one chunk.
        stop = max(int(np.searchsorted(done, (done[position - 1] if position else 0) + chunk, "right")), position + 1)
        left = np.repeat(np.arange(position, stop), partners[position:stop])
        offset = np.arange(len(left)) - np.repeat(np.cumsum(partners[position:stop]) - partners[position:stop],
                                                  partners[position:stop])
        right = left + 1 + offset
        a, b = face[left], face[right]
        keep = ((lo[a] <= hi[b]) & (lo[b] <= hi[a])).all(1)
        a, b, here = a[keep], b[keep], key[left[keep]]
        corner = np.floor((np.maximum(lo[a], lo[b]) - origin) / size).astype(np.int64)
        keep = (corner[:, 0] * dims[1] + corner[:, 1]) * dims[2] + corner[:, 2] == here
        a, b = a[keep], b[keep]
        keep = ~(f[a][:, :, None] == f[b][:, None, :]).any((1, 2))
        a, b = a[keep], b[keep]
        meet = _triangles_meet(tri[a], tri[b], eps)
        found.append(np.stack([a[meet], b[meet]], 1))
        position = stop
    return np.concatenate(found) if found else np.zeros((0, 2), dtype=np.int64)


def untangle(vertices: np.ndarray, faces: np.ndarray, rounds: int = 12) -> tuple[np.ndarray, int]:
    """``vertices`` moved so that no two triangles of ``faces`` pass through each other, and the
    number of crossing pairs left (0 unless ``rounds`` ran out).

    Each round relaxes the vertices of the crossing triangles and their neighbours towards the
    mean of their neighbours (umbrella smoothing), a region grown by one ring every round that
    still finds a crossing. A fold is a spot where the surface's local average lies on the right
    side, so relaxing it pulls the folded part back; only the region moves, the rest of the
    surface and the topology stay exactly as they were.
    """
    v = np.asarray(vertices, dtype=np.float64)
    f = np.asarray(faces, dtype=np.int64)
    pairs = intersecting_pairs(v, f)
    if len(pairs) == 0:
        return vertices, 0
    v = v.copy()
    edges = np.unique(np.sort(directed_edges(f), axis=1), axis=0)
    both = np.concatenate([edges, edges[:, ::-1]])
    degree = np.bincount(both[:, 0], minlength=len(v)).astype(np.float64)
    for ring in range(1, rounds + 1):
        region = np.zeros(len(v), dtype=bool)
        region[f[pairs.reshape(-1)].reshape(-1)] = True
        for _ in range(ring):
            region[both[region[both[:, 0]], 1]] = True
        for _ in range(4):
            total = np.stack([np.bincount(both[:, 0], v[both[:, 1], k], len(v)) for k in range(3)], 1)
            mean = total / np.maximum(degree, 1.0)[:, None]
            v[region] += 0.5 * (mean[region] - v[region])
        pairs = intersecting_pairs(v, f)
        if len(pairs) == 0:
            break
    return v.astype(np.asarray(vertices).dtype, copy=False), len(pairs)


def _triangles_meet(p: np.ndarray, q: np.ndarray, eps: float) -> np.ndarray:
    """"N" bool: whether triangles ``p[i]`` and ``q[i]`` ("N 3 3") overlap on every separating axis."""
    ep, eq = np.roll(p, -1, 1) - p, np.roll(q, -1, 1) - q  # "N 3 3" edges
    n_p, n_q = np.cross(ep[:, 0], ep[:, 1]), np.cross(eq[:, 0], eq[:, 1])
    meet = np.ones(len(p), dtype=bool)
    stages = [
        lambda i: np.stack([n_p[i], n_q[i]], 1),
        lambda i: np.cross(ep[i, :, None], eq[i, None, :]).reshape(-1, 9, 3),
        lambda i: np.concatenate([np.cross(n_p[i, None], ep[i]), np.cross(n_q[i, None], eq[i])], 1),
    ]
    for axes_of in stages:
        alive = np.flatnonzero(meet)
        if len(alive) == 0:
            break
        axes = axes_of(alive)  # "A K 3"
        axes = axes / np.maximum(np.linalg.norm(axes, axis=-1, keepdims=True), 1e-300)
        sp = np.einsum("avd,akd->akv", p[alive], axes)
        sq = np.einsum("avd,akd->akv", q[alive], axes)
        apart = (sp.max(-1) < sq.min(-1) - eps) | (sq.max(-1) < sp.min(-1) - eps)
        meet[alive[apart.any(1)]] = False
    return meet
