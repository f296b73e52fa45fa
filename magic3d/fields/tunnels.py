"""Sealing tunnels narrower than a few tet-grid cells, and cutting handles thinner than a few,
before the final mesh is extracted.

Score distillation does not see a slit under a roof's eaves or between a door and its wall, but
a sign pattern of a few lattice vertices there becomes a tunnel through the surface: a house
of genus 2 instead of 0. Such tunnels are found by closing the occupied lattice (``sdf < 0``)
by ``iterations`` cells; each piece that closing adds is kept only if it lowers the number of
tunnels, so a concave corner the closing would also fill keeps its shape, and a torus's hole,
wider than the closing, stays open.

The dual defect is a thin bar: a loop SDS drew on a roof (a chimney bent into a ring) is a handle
whose hole is wide but whose bar is a cell or two thick. Opening the occupied lattice by
``iterations`` cells removes the bar (and every other thin feature); each piece opening removes is
cut only if that lowers the number of tunnels without splitting a body off, so a table's legs, a
lamp's stem and a torus's ring, thicker than the opening or not on a loop, keep their material.

Tunnels are counted with the Euler characteristic of the occupied part of the tet complex (its
vertices, edges, triangles and tets whose corners are all inside): for a solid of ``b`` pieces,
``g`` tunnels and ``c`` cavities it is ``b - g + c``, and the region ``sdf < 0`` that marching
tetrahedra bounds has the same topology. Only the simplices around the candidates are counted
(the rest is the same either way): milliseconds, where extracting and checking a mesh per
candidate took about a second.
"""

from __future__ import annotations

import numpy as np
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor


def _unique_rows(rows: Int[np.ndarray, "N K"]) -> Int[np.ndarray, "M K"]:
    """The distinct rows, sorted: through one int64 key per row where the vertex count allows it,
    several times faster than ``np.unique(axis=0)`` (which sorts rows as structured records)."""
    rows = np.sort(rows, 1)
    base = int(rows.max(initial=0)) + 1
    if base ** rows.shape[1] >= 2**63:
        return np.unique(rows, axis=0)
    key = np.zeros(len(rows), dtype=np.int64)
    for column in range(rows.shape[1]):
        key = key * base + rows[:, column]
    return rows[np.unique(key, return_index=True)[1]]


def _simplices(tets: np.ndarray) -> tuple[np.ndarray, ...]:
    """Unique edges "E 2", triangles "F 3" and tets "T 4" of the complex ``tets`` spans, and the
    vertices its edges use (what ``euler_characteristic`` counts, the same for every trial)."""
    edges = _unique_rows(tets[:, [[0, 1], [0, 2], [0, 3], [1, 2], [1, 3], [2, 3]]].reshape(-1, 2))
    faces = _unique_rows(tets[:, [[0, 1, 2], [0, 1, 3], [0, 2, 3], [1, 2, 3]]].reshape(-1, 3))
    return edges, faces, tets, np.unique(edges)


def euler_characteristic(inside: Bool[np.ndarray, " V"], simplices: tuple[np.ndarray, ...]) -> int:
    """Vertices - edges + triangles - tets of the complex spanned by the ``inside`` vertices
    (vertices counted over those the simplices use)."""
    edges, faces, tets, used = simplices
    return int(inside[used].sum() - inside[edges].all(1).sum() + inside[faces].all(1).sum()
               - inside[tets].all(1).sum())


def _hollows(occupied: Bool[np.ndarray, "X Y Z"]) -> int:
    """Pieces of empty space that do not reach the grid's side."""
    from scipy import ndimage

    labels, count = ndimage.label(np.pad(~occupied, 1, constant_values=True))
    return count - 1


def _bodies(inside: Bool[np.ndarray, " V"], edges: Int[np.ndarray, "E 2"]) -> int:
    """Pieces of the occupied complex: inside vertices joined by tet edges with both ends inside."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    kept = edges[inside[edges].all(1)]
    graph = coo_matrix((np.ones(len(kept)), (kept[:, 0], kept[:, 1])), shape=(inside.size, inside.size))
    _, labels = connected_components(graph, directed=False)
    return int(np.unique(labels[inside]).size)


def seal_tunnels(
    sdf: Float[Tensor, " V"], tets: Int[Tensor, "T 4"], cells: int, iterations: int, depth: float
) -> tuple[Float[Tensor, " V"], int]:
    """``sdf`` with tunnels up to about ``2 * iterations`` cells wide filled, and how many were.

    ``cells`` is the lattice's cells per side (vertices are numbered as ``tet_grid`` makes them);
    a sealed vertex gets ``-depth``, a sliver inside, so the seal is a thin membrane that moves
    nothing else.
    """
    return _repair(sdf, tets, cells, iterations, depth, fill=True)


def cut_handles(
    sdf: Float[Tensor, " V"], tets: Int[Tensor, "T 4"], cells: int, iterations: int, depth: float
) -> tuple[Float[Tensor, " V"], int]:
    """``sdf`` with handles whose bar is up to about ``2 * iterations`` cells thick cut, and how
    many were; a cut vertex gets ``+depth``, a sliver outside, so nothing else moves."""
    return _repair(sdf, tets, cells, iterations, depth, fill=False)


def _repair(
    sdf: Float[Tensor, " V"], tets: Int[Tensor, "T 4"], cells: int, iterations: int, depth: float, fill: bool
) -> tuple[Float[Tensor, " V"], int]:
    """Closing (``fill``) or opening the occupied lattice by ``iterations``; each piece that changes
    is taken, smallest first (the least change that repairs), only where it removes tunnels and
    adds no hollow (and, cutting, splits no body off)."""
    from scipy import ndimage

    if iterations < 1:
        return sdf, 0
    n = cells + 1
    before = (sdf < 0).detach().cpu().numpy()
    occupied = before.reshape(n, n, n)
    if fill:
        pad = iterations + 1
        closed = ndimage.binary_closing(np.pad(occupied, pad), iterations=iterations)[(slice(pad, -pad),) * 3]
        changed = closed & ~occupied
    else:
        changed = occupied & ~ndimage.binary_opening(occupied, iterations=iterations)
    labels, count = ndimage.label(changed, structure=np.ones((3, 3, 3)))
    if count == 0:
        return sdf, 0
    labels = labels.reshape(-1)
    host = tets.detach().cpu().numpy().astype(np.int64)
    # Only simplices that touch a candidate vertex differ between the two sides of a comparison:
    # the tets around the candidates hold them all, so the counts stay local and cheap.
    simplices = _simplices(host[(labels > 0)[host].any(1)])
    all_edges = None if fill else _simplices(host)[0]
    inside = before.copy()
    chi, repaired = euler_characteristic(inside, simplices), 0
    hollows = _hollows(occupied)
    bodies = None if fill else _bodies(inside, all_edges)
    sizes = np.bincount(labels)[1:]
    for piece in np.argsort(sizes, kind="stable") + 1:
        trial = inside | (labels == piece) if fill else inside & (labels != piece)
        gained = euler_characteristic(trial, simplices)
        # chi = bodies - tunnels + hollows: a gain from a new hollow, or from a body cut off, removes no tunnel.
        if gained <= chi or _hollows(trial.reshape(n, n, n)) > hollows:
            continue
        if not fill and _bodies(trial, all_edges) > bodies:
            continue
        inside, chi, repaired = trial, gained, repaired + gained - chi
    if repaired == 0:
        return sdf, 0
    moved = torch.from_numpy(inside != before).to(sdf.device)
    return torch.where(moved, torch.full_like(sdf, -depth if fill else depth), sdf), repaired
