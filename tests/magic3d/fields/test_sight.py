"""The surface the cameras see: optical depth along the orbit's lines of sight, and DMTet cut there."""

from __future__ import annotations

import math

import numpy as np
import torch
import trimesh

from magic3d.fields.dmtet import DMTet
from magic3d.fields.sight import HALF_LIGHT_DEPTH, fill_hidden_space, sight_depth, sight_directions

ORBIT = (-10.0, 45.0)


def lattice(n: int, bound: float = 1.0) -> torch.Tensor:
    axis = torch.linspace(-bound, bound, n)
    return torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1)  # n n n 3, (x, y, z)


def test_directions_are_unit_vectors_over_the_orbit():
    d = sight_directions(ORBIT, elevations=4, azimuth_step=30.0)
    assert d.shape == (4 * 12, 3)
    assert torch.allclose(d.norm(dim=-1), torch.ones(48))
    elevation = torch.rad2deg(torch.asin(d[:, 1]))
    assert math.isclose(float(elevation.min()), -10.0, abs_tol=1e-4) and math.isclose(float(elevation.max()), 45.0, abs_tol=1e-4)
    assert torch.allclose(d[0], torch.tensor([0.0, math.sin(math.radians(-10.0)), math.cos(math.radians(-10.0))]), atol=1e-6)


def test_depth_in_a_uniform_ball_is_density_times_the_way_out():
    n, sigma, radius = 41, 2.0, 0.6
    points = lattice(n)
    density = sigma * (points.norm(dim=-1) < radius).float()
    depth = sight_depth(density, 1.0, sight_directions(ORBIT))
    centre = n // 2
    # From the centre every way out is one radius long; outside the ball nothing is in the way.
    assert abs(float(depth[centre, centre, centre]) - sigma * radius) < 0.15 * sigma * radius
    assert float(depth[points.norm(dim=-1) > radius + 0.1].abs().max()) < 1e-3
    # Halfway out along +Z (a camera's way) the depth is the rest of the radius.
    z = centre + round(0.3 / (2.0 / (n - 1)))
    assert abs(float(depth[centre, centre, z]) - sigma * (radius - 0.3)) < 0.25 * sigma * radius


def test_an_opening_no_camera_sees_into_is_solid_and_a_torus_keeps_its_hole():
    # A box 1.2 wide, hollow inside and open at the bottom: the orbit never looks up into it.
    def cup(p: torch.Tensor) -> torch.Tensor:
        box = (p.abs() < 0.6).all(-1)
        hollow = (p[..., [0, 2]].abs() < 0.45).all(-1) & (p[..., 1] < 0.45)
        return 20.0 * (box & ~hollow).float()

    def torus(p: torch.Tensor) -> torch.Tensor:
        ring = torch.hypot(p[..., 0].hypot(p[..., 2]) - 0.5, p[..., 1])
        return 20.0 * (ring < 0.2).float()

    def mesh(density_fn, sight) -> trimesh.Trimesh:
        dmtet = DMTet(48)
        level = dmtet.init_from_density(density_fn, threshold=None if sight is not None else 10.0, sight=sight,
                                        keep_largest=True)
        v, f = dmtet.extract()
        out = trimesh.Trimesh(v.detach().numpy(), f.numpy())
        assert out.is_watertight and (sight is None or level == HALF_LIGHT_DEPTH)
        return out

    seen = sight_directions(ORBIT)
    by_level, by_sight = mesh(cup, None), mesh(cup, seen)
    assert by_level.volume < 0.7 * 1.2**3  # a density level keeps the cup's inside empty
    assert by_sight.volume > 0.85 * 1.2**3 and by_sight.euler_number == 2  # what the renders showed: a box
    # The torus's hole is seen through from above: it stays a hole.
    assert mesh(torus, seen).euler_number == 0


def test_a_hazy_field_cut_by_sight_is_one_solid_body():
    # A haze whose renders are opaque (depth ~7 through it) but whose density dips at random
    # from voxel to voxel: a level within its range cuts it into a sponge, sight keeps one body.
    gen = torch.Generator().manual_seed(0)
    noise = torch.rand(48, 48, 48, generator=gen)

    def haze(p: torch.Tensor) -> torch.Tensor:
        inside = (p.abs() < 0.5).all(-1).float()
        idx = ((p + 1) / 2 * 47).round().long().clamp(0, 47)
        return inside * (4.0 + 6.0 * noise[idx[..., 0], idx[..., 1], idx[..., 2]])

    def mesh(sight) -> trimesh.Trimesh:
        dmtet = DMTet(48)
        dmtet.init_from_density(haze, threshold=None if sight is not None else 7.0, sight=sight)
        v, f = dmtet.extract()
        return trimesh.Trimesh(v.detach().numpy(), f.numpy())

    sponge, solid = mesh(None), mesh(sight_directions(ORBIT))
    assert sponge.euler_number != 2
    assert solid.is_watertight and solid.euler_number == 2
    assert 0.3 < solid.volume < 0.9  # the unit box, less the ~0.1 it takes to hide half the light (and a cell)


def test_fill_hidden_space_fills_a_hollow_with_a_hole_and_keeps_a_torus_hole_open():
    shell = np.zeros((24, 24, 24), dtype=bool)
    shell[2:22, 2:22, 2:22] = True
    shell[6:18, 6:18, 6:18] = False  # the hollow, 4 cells under the surface
    shell[11:13, 18:22, 11:13] = False  # a hole 2 cells wide from the hollow out through the top
    filled = fill_hidden_space(shell, seal=2)
    # Solid, but for a dent: the top of the hole, up to ``seal`` + 1 cells deep, stays open.
    dent = np.zeros_like(shell)
    dent[11:13, 19:22, 11:13] = True
    box = (slice(2, 22),) * 3
    assert (filled[box] == ~dent[box]).all() and filled.sum() == 20**3 - 2 * 2 * 3
    # Without sealing, the hole and everything under it is a well open to the sky.
    assert not fill_hidden_space(shell, seal=0)[11:13, 6:22, 11:13].any()
    # A flat ring (a torus seen from above), a cup open at the top: nothing to fill.
    y, x, z = np.meshgrid(*(np.arange(24) - 11.5,) * 3, indexing="ij")
    ring = (np.abs(y) < 2) & (np.hypot(x, z) < 9) & (np.hypot(x, z) > 3.5)
    cup = (y < 8) & (np.maximum(np.abs(x), np.abs(z)) < 8) & ~((y > -6) & (np.maximum(np.abs(x), np.abs(z)) < 6))
    assert (fill_hidden_space(ring) == ring).all() and (fill_hidden_space(cup) == cup).all()
