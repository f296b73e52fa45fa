"""The topology every baked surface must have: closed (each edge shared by exactly two faces,
in opposite directions), in one piece, with the genus of its shape.

Marching tets gives a closed surface, but merging vertices closer than ``bake.merge_distance``
drops the faces they collapse, and decimation can tear a thin spot: both leave small holes
(a 5-edge hole of 1e-5 m edges on a mushroom). ``close_holes`` fills every such loop, so
closure is a property of the bake rather than of a lucky asset.
"""

from __future__ import annotations

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


def surface_report(vertices: np.ndarray, faces: np.ndarray) -> SurfaceReport:
    """Closure, pieces and genus of a welded triangle mesh."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    faces = np.asarray(faces, dtype=np.int64)
    edges = directed_edges(faces)
    _, counts = np.unique(np.sort(edges, axis=1), axis=0, return_counts=True)
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
