"""The solid the cameras see: a density field carved along the orbit's lines of sight.

SDS only asks a NeRF's renders to look right, and a render integrates density along each ray:
a coarse field is as much a haze as a surface. Cutting it at one density level then gives a
shell full of holes wherever the haze is thin (an amortized field's cube came out as a porous
cup that read as a sphere), although every render of it showed a cube. The surface the renders
show lies where a ray's transmittance falls to one half. So a point is outside when some line
of sight from the orbit reaches it with more than half its light left, and inside otherwise: the
object plus the space no camera of the orbit sees into, which no render could tell from solid.

``fill_hidden_space`` is the same idea on an occupancy grid seen along its three axes: the
hollows inside a shell that no axis-aligned line of sight reaches are filled (DMTet's
``fill_hidden``, for either surface).

The optical depth is integrated on the density at a lattice's vertices, one orthographic
direction at a time: the lattice is resampled into a frame whose third axis points at the
camera, summed along it, and read back at the vertices. The orbit's cameras sit 2.5 to 3.5
bounds away, so orthographic sight lines are close to theirs.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float
from torch import Tensor

# Transmittance one half: where a ray's expected depth, and so the rendered surface, lies.
HALF_LIGHT_DEPTH = math.log(2.0)
# Holes in a hollow NeRF's shell up to this wide (world units; 4 cells of a resolution-64 grid) are sealed
# while looking for the hollow behind them (see fill_hidden_space); the holes themselves stay open.
SEALED_HOLE_WIDTH = 0.25


def sight_directions(
    elevation: tuple[float, float], elevations: int = 5, azimuth_step: float = 15.0,
    device: torch.device | str = "cpu",
) -> Float[Tensor, "D 3"]:
    """Unit vectors from the origin towards cameras of an orbit (degrees; Y up, azimuth 0 on +Z):
    ``elevations`` rings spread over ``elevation``, every ``azimuth_step`` degrees round each."""
    lo, hi = elevation
    el = torch.deg2rad(torch.linspace(lo, hi, elevations, device=device))
    az = torch.deg2rad(torch.arange(0.0, 360.0, azimuth_step, device=device))
    el, az = (g.reshape(-1) for g in torch.meshgrid(el, az, indexing="ij"))
    return torch.stack([el.cos() * az.sin(), el.sin(), el.cos() * az.cos()], dim=-1)


def sight_depth(
    density: Float[Tensor, "N N N"], bound: float, directions: Float[Tensor, "D 3"],
) -> Float[Tensor, "N N N"]:
    """At each vertex of a lattice over [-bound, bound]^3 (indexed x, y, z), the least optical
    depth between it and any of ``directions``' cameras: ``> HALF_LIGHT_DEPTH`` is behind what
    every camera renders."""
    n = density.shape[0]
    device = density.device
    volume = density.float().permute(2, 1, 0)[None, None]  # grid_sample reads (z, y, x) with points (x, y, z)
    reach = bound * math.sqrt(3.0)  # the frame must hold the lattice's corners in any direction
    m = int(math.ceil(1.5 * n))
    t = torch.linspace(-reach, reach, m, device=device)
    step = 2.0 * reach / (m - 1)  # the spacing of t, without reading it back from the device
    axis = torch.linspace(-bound, bound, n, device=device)
    vertices = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)
    frame_u, frame_v, frame_w = torch.meshgrid(t, t, t, indexing="ij")
    frame = torch.stack([frame_u, frame_v, frame_w], dim=-1)  # m m m 3: (u, v, w) coordinates
    best = torch.full((vertices.shape[0],), float("inf"), device=device)
    for basis in _frames(directions.to(device)):  # 3 3: rows u, v, w (w towards the camera)
        seen = F.grid_sample(volume, (frame @ basis / bound)[None], align_corners=True, padding_mode="zeros")[0, 0]
        # Depth from the camera's side (w = +reach) down to each sample, the sample's own half included.
        depth = (seen.flip(-1).cumsum(-1).flip(-1) - 0.5 * seen) * step  # u v w
        at = (vertices @ basis.T / reach).flip(-1)  # grid_sample's (x, y, z) is (w, v, u) here
        value = F.grid_sample(depth[None, None], at.view(1, -1, 1, 1, 3), align_corners=True, padding_mode="border")
        best = torch.minimum(best, value.view(-1))
    return best.view(n, n, n)


def _frames(directions: Float[Tensor, "D 3"]) -> Float[Tensor, "D 3 3"]:
    """Orthonormal (u, v, w) rows with w along each direction (u horizontal, or +X looking straight down)."""
    w = directions / directions.norm(dim=-1, keepdim=True)
    up = torch.tensor([0.0, 1.0, 0.0], device=w.device).expand_as(w)
    x_axis = torch.tensor([1.0, 0.0, 0.0], device=w.device).expand_as(w)
    u = torch.linalg.cross(up, w, dim=-1)
    u = torch.where(u.norm(dim=-1, keepdim=True) < 1e-6, x_axis, u)
    u = u / u.norm(dim=-1, keepdim=True)
    v = torch.linalg.cross(w, u, dim=-1)
    return torch.stack([u, v, w], dim=1)


def fill_hidden_space(occupied: Bool[np.ndarray, "X Y Z"], seal: int = 2) -> Bool[np.ndarray, "X Y Z"]:
    """``occupied`` plus the hollows inside it: cells no axis-aligned line of sight reaches.

    A NeRF's inside gets no gradient once its surface is opaque, and hash collisions with the
    emptied space around it often hollow it out: the mesh becomes a shell with a second, inner
    surface. The hollow is often open to the outside through a small hole, which a plain hole
    fill misses and which leaves a well down the line of sight. So sight lines are traced again
    with holes up to ``2 * seal`` cells wide closed, and what that hides is filled too, but not
    what the closing itself adds: the hole stays a dent and concave corners keep their shape. A
    torus's hole, a cup's inside and the space under a table are seen from outside: they stay open.
    """
    from scipy import ndimage

    def hidden(solid: np.ndarray) -> np.ndarray:
        out = np.ones_like(solid)
        for axis in range(3):
            before = np.logical_or.accumulate(solid, axis=axis)
            after = np.flip(np.logical_or.accumulate(np.flip(solid, axis), axis=axis), axis)
            out &= before & after
        return out

    filled = occupied | hidden(occupied)
    if seal < 1:
        return filled
    # Padding keeps the closing's erosion from eating into shapes that touch the grid's side.
    inner = (slice(seal + 1, -seal - 1),) * 3
    closed = ndimage.binary_closing(np.pad(occupied, seal + 1), iterations=seal)
    return filled | (hidden(closed) & ~closed)[inner]


__all__ = ["HALF_LIGHT_DEPTH", "SEALED_HOLE_WIDTH", "fill_hidden_space", "sight_depth", "sight_directions"]
