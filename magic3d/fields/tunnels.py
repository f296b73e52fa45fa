"""Sealing tunnels narrower than a few tet-grid cells before the final mesh is extracted.

Score distillation does not see a slit under a roof's eaves or between a door and its wall, but
a sign pattern of a few lattice vertices there becomes a tunnel through the surface: a house
of genus 2 instead of 0. Such tunnels are found by closing the occupied lattice (``sdf < 0``)
by ``iterations`` cells; each piece that closing adds is kept only if it lowers the number of
tunnels, so a concave corner the closing would also fill keeps its shape, and a torus's hole,
wider than the closing, stays open.

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


def _simplices(tets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unique edges "E 2", triangles "F 3" and tets "T 4" of the complex ``tets`` spans."""
    edges = np.unique(np.sort(tets[:, [[0, 1], [0, 2], [0, 3], [1, 2], [1, 3], [2, 3]]].reshape(-1, 2), 1), axis=0)
    faces = np.unique(np.sort(tets[:, [[0, 1, 2], [0, 1, 3], [0, 2, 3], [1, 2, 3]]].reshape(-1, 3), 1), axis=0)
    return edges, faces, tets


def euler_characteristic(inside: Bool[np.ndarray, " V"], simplices: tuple[np.ndarray, ...]) -> int:
    """Vertices - edges + triangles - tets of the complex spanned by the ``inside`` vertices
    (vertices counted over those the simplices use)."""
    edges, faces, tets = simplices
    used = np.unique(edges)
    return int(inside[used].sum() - inside[edges].all(1).sum() + inside[faces].all(1).sum()
               - inside[tets].all(1).sum())


def _hollows(occupied: Bool[np.ndarray, "X Y Z"]) -> int:
    """Pieces of empty space that do not reach the grid's side."""
    from scipy import ndimage

    labels, count = ndimage.label(np.pad(~occupied, 1, constant_values=True))
    return count - 1


def seal_tunnels(
    sdf: Float[Tensor, " V"], tets: Int[Tensor, "T 4"], cells: int, iterations: int, depth: float
) -> tuple[Float[Tensor, " V"], int]:
    """``sdf`` with tunnels up to about ``2 * iterations`` cells wide filled, and how many were.

    ``cells`` is the lattice's cells per side (vertices are numbered as ``tet_grid`` makes them);
    a sealed vertex gets ``-depth``, a sliver inside, so the seal is a thin membrane that moves
    nothing else.
    """
    from scipy import ndimage

    if iterations < 1:
        return sdf, 0
    n = cells + 1
    inside = (sdf < 0).detach().cpu().numpy()
    occupied = inside.reshape(n, n, n)
    pad = iterations + 1
    closed = ndimage.binary_closing(np.pad(occupied, pad), iterations=iterations)[(slice(pad, -pad),) * 3]
    labels, count = ndimage.label(closed & ~occupied, structure=np.ones((3, 3, 3)))
    if count == 0:
        return sdf, 0
    labels = labels.reshape(-1)
    # Only simplices that touch a candidate vertex differ between the two sides of a comparison:
    # the tets around the candidates hold them all, so the counts stay local and cheap.
    host = tets.detach().cpu().numpy().astype(np.int64)
    simplices = _simplices(host[(labels > 0)[host].any(1)])
    chi, sealed = euler_characteristic(inside, simplices), 0
    hollows = _hollows(inside.reshape(n, n, n))
    sizes = np.bincount(labels)[1:]
    for piece in np.argsort(sizes, kind="stable") + 1:  # smallest first: the least change that seals
        trial = inside | (labels == piece)
        gained = euler_characteristic(trial, simplices)
        # A gain from a new enclosed hollow is no tunnel sealed.
        if gained > chi and _hollows(trial.reshape(n, n, n)) <= hollows:
            inside, chi, sealed = trial, gained, sealed + gained - chi
    if sealed == 0:
        return sdf, 0
    filled = torch.from_numpy(inside & ~(sdf < 0).detach().cpu().numpy()).to(sdf.device)
    return torch.where(filled, torch.full_like(sdf, -depth), sdf), sealed
