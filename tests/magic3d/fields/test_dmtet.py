"""Marching tetrahedra gives closed, manifold, outward-facing meshes; density initialisation finds the surface."""

from __future__ import annotations

import math

import pytest
import torch
import trimesh

from magic3d.fields.dmtet import (
    DMTet,
    auto_density_threshold,
    laplacian_smoothness,
    marching_tetrahedra,
    mesh_edges,
    normal_consistency,
    tet_grid,
)


def check_closed_manifold(vertices: torch.Tensor, faces: torch.Tensor) -> int:
    """Assert every edge has exactly two faces; return the Euler characteristic V - E + F."""
    f = faces.long()
    edges = torch.cat([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]).sort(-1).values
    _, counts = torch.unique(edges, dim=0, return_counts=True)
    assert counts.min() == 2 and counts.max() == 2, f"edge face counts {counts.min()}..{counts.max()}"
    used = torch.unique(f)
    assert used.numel() == vertices.shape[0], "unreferenced vertices"
    return vertices.shape[0] - counts.numel() + f.shape[0]


def test_grid_tets_fill_the_cube_without_overlap():
    vertices, tets = tet_grid(6, bound=1.0)  # 3 cells per side
    assert vertices.shape == (64, 3) and tets.shape == (6 * 27, 4)
    p = vertices[tets]
    signed = torch.linalg.det(p[:, 1:] - p[:, :1]) / 6
    assert (signed > 0).all(), "marching tetrahedra's winding assumes positively oriented tets"
    volume = signed.abs()
    # Total volume equals the cube's, and every tet is non-degenerate: the 6 per cell tile it.
    assert torch.isclose(volume.sum(), torch.tensor(8.0), atol=1e-4)
    assert volume.min() > 0.9 * (2 / 3) ** 3 / 6
    # Neighbouring cells share their face triangulation: every interior triangle has exactly 2 tets.
    tris = torch.cat([tets[:, [0, 1, 2]], tets[:, [0, 1, 3]], tets[:, [0, 2, 3]], tets[:, [1, 2, 3]]]).sort(-1).values
    unique_tris, counts = torch.unique(tris, dim=0, return_counts=True)
    corner = vertices[unique_tris]  # U 3 3
    on_boundary = ((corner - 1).abs() < 1e-6).all(1).any(-1) | ((corner + 1).abs() < 1e-6).all(1).any(-1)
    assert (counts[~on_boundary] == 2).all() and (counts[on_boundary] == 1).all()


# threestudio's load/tets/{32,64}_tets.npz (the grids its Magic3D configs name by
# isosurface_resolution): vertex and tetrahedron counts as shipped.
REFERENCE_GRIDS = {32: (5_034, 24_444), 64: (36_562, 192_492)}


@pytest.mark.parametrize("resolution", sorted(REFERENCE_GRIDS))
def test_grid_resolution_counts_as_the_reference_does(resolution):
    vertices, tets = tet_grid(resolution)
    ref_vertices, ref_tets = REFERENCE_GRIDS[resolution]
    cells = resolution // 2
    assert vertices.shape[0] == (cells + 1) ** 3 and tets.shape[0] == 6 * cells**3
    # Quartet's lattice is not ours cell by cell, but the same N gives the same size to within 3%.
    assert abs(vertices.shape[0] / ref_vertices - 1) < 0.03, vertices.shape[0]
    assert abs(tets.shape[0] / ref_tets - 1) < 0.03, tets.shape[0]
    assert DMTet(resolution).cell == pytest.approx(2.0 / cells)


@pytest.mark.parametrize("resolution", [0, 7, -4])
def test_grid_resolution_must_be_positive_and_even(resolution):
    with pytest.raises(ValueError, match="even"):
        tet_grid(resolution)


@pytest.mark.parametrize("resolution", [32, 48])
def test_sphere_is_closed_manifold_and_on_the_radius(resolution):
    radius = 0.6
    vertices, tets = tet_grid(resolution)
    sdf = vertices.norm(dim=-1) - radius
    v, f = marching_tetrahedra(vertices, tets, sdf)
    assert check_closed_manifold(v, f) == 2
    cell = 2.0 / (resolution // 2)
    assert (v.norm(dim=-1) - radius).abs().max() < cell
    mesh = trimesh.Trimesh(v.numpy(), f.numpy(), process=False)
    assert mesh.is_watertight and mesh.is_winding_consistent
    # Outward faces give a positive volume close to the ball's.
    assert mesh.volume > 0
    assert abs(mesh.volume - 4 / 3 * math.pi * radius**3) < 0.05 * 4 / 3 * math.pi * radius**3


def test_torus_has_euler_characteristic_zero():
    vertices, tets = tet_grid(64)
    x, y, z = vertices.unbind(-1)
    sdf = torch.sqrt((torch.sqrt(x**2 + z**2) - 0.55) ** 2 + y**2) - 0.25
    v, f = marching_tetrahedra(vertices, tets, sdf)
    assert check_closed_manifold(v, f) == 0
    assert trimesh.Trimesh(v.numpy(), f.numpy(), process=False).volume > 0


def test_two_balls_are_two_spheres():
    vertices, tets = tet_grid(48)
    sdf = torch.minimum((vertices - torch.tensor([0.45, 0, 0])).norm(dim=-1) - 0.3,
                        (vertices + torch.tensor([0.45, 0, 0])).norm(dim=-1) - 0.3)
    v, f = marching_tetrahedra(vertices, tets, sdf)
    assert check_closed_manifold(v, f) == 4


def test_surface_touching_the_grid_boundary_stays_closed():
    dmtet = DMTet(16)
    dmtet.init_from_sdf(lambda p: p.norm(dim=-1) - 1.5)  # everything inside, boundary forced outside
    v, f = dmtet.extract()
    assert f.shape[0] > 0 and check_closed_manifold(v, f) == 2


def test_deformed_noisy_surface_stays_closed_and_consistently_wound():
    gen = torch.Generator().manual_seed(0)
    dmtet = DMTet(32)
    # A lumpy SDF with many vertices at exactly zero (degenerate triangles) and strong deformation.
    dmtet.init_from_sdf(lambda p: (p.norm(dim=-1) - 0.6 + 0.1 * torch.randn(p.shape[0], generator=gen)))
    with torch.no_grad():
        dmtet.sdf[torch.rand(dmtet.sdf.shape[0], generator=gen) < 0.05] = 0.0
        dmtet.deform.copy_(3.0 * torch.randn(dmtet.deform.shape, generator=gen))
    v, f = dmtet.extract()
    check_closed_manifold(v, f)
    mesh = trimesh.Trimesh(v.detach().numpy(), f.numpy(), process=False)
    assert mesh.is_watertight and mesh.is_winding_consistent


def test_gradients_reach_sdf_and_deformation():
    dmtet = DMTet(24)
    dmtet.init_from_sdf(lambda p: p.norm(dim=-1) - 0.5)
    v, f = dmtet.extract()
    v.norm(dim=-1).mean().backward()
    assert dmtet.sdf.grad.abs().sum() > 0 and dmtet.deform.grad.abs().sum() > 0
    # Raising the SDF shrinks the surface: d(mean radius)/d(sdf) is negative where it is non-zero.
    assert dmtet.sdf.grad.sum() < 0


def test_deformation_is_bounded_by_half_a_cell():
    dmtet = DMTet(16)
    with torch.no_grad():
        dmtet.deform.fill_(100.0)
    shift = (dmtet.vertices() - dmtet.grid_vertices).abs().max()
    assert shift <= 0.5 * dmtet.cell + 1e-6 and shift > 0.49 * dmtet.cell


def soft_ball(points, radius=0.5, peak=40.0, width=0.03):
    return peak * torch.sigmoid((radius - points.norm(dim=-1)) / width) + 0.05 * torch.rand(points.shape[0])


@pytest.mark.parametrize("peak", [5.0, 40.0, 2000.0])
def test_auto_threshold_finds_a_density_blob_at_any_scale(peak):
    torch.manual_seed(0)
    dmtet = DMTet(48)
    thr = dmtet.init_from_density(lambda p: soft_ball(p, peak=peak))
    # The split sits between the empty level (~0) and the solid level (peak), the same fraction at any scale.
    assert 0.1 * peak < thr < 0.6 * peak
    v, f = dmtet.extract()
    assert check_closed_manifold(v, f) == 2
    level_radius = 0.5 + 0.03 * math.log(peak / thr - 1.0)  # where the sigmoid ball equals thr
    assert abs(level_radius - 0.5) < 0.06
    assert (v.norm(dim=-1) - level_radius).abs().max() < dmtet.cell
    # Next to the surface the SDF reads as a distance in world units, whatever the density scale.
    surface_radius = float(v.detach().norm(dim=-1).mean())
    near = (dmtet.grid_vertices.norm(dim=-1) - surface_radius).abs() < dmtet.cell
    expected = dmtet.grid_vertices[near].norm(dim=-1) - surface_radius
    assert (dmtet.sdf[near] - expected).abs().median() < 0.5 * dmtet.cell


def test_auto_threshold_ignores_faint_haze():
    torch.manual_seed(0)
    points = torch.rand(50000, 3) * 2 - 1
    haze = 0.3 * torch.rand(points.shape[0])
    density = haze + soft_ball(points, radius=0.4, peak=80.0)
    thr = auto_density_threshold(density)
    assert 1.0 < thr < 60.0


def test_explicit_threshold_overrides_the_automatic_one():
    dmtet = DMTet(48)
    # A Gaussian blob has no natural edge: the threshold sets the radius, r = sqrt(2 s^2 ln(peak/thr)).
    thr = dmtet.init_from_density(lambda p: 10.0 * torch.exp(-(p**2).sum(-1) / (2 * 0.3**2)), threshold=2.0)
    assert thr == 2.0
    v, _ = dmtet.extract()
    expected = math.sqrt(2 * 0.3**2 * math.log(10.0 / 2.0))
    assert (v.norm(dim=-1) - expected).abs().max() < dmtet.cell


def test_empty_density_is_an_error():
    with pytest.raises(ValueError, match="constant"):
        DMTet(8).init_from_density(lambda p: torch.zeros(p.shape[0]))


def test_regularisers_prefer_smooth_meshes():
    sphere = trimesh.creation.icosphere(subdivisions=3, radius=0.5)
    v = torch.tensor(sphere.vertices, dtype=torch.float32)
    f = torch.tensor(sphere.faces, dtype=torch.long)
    gen = torch.Generator().manual_seed(0)
    noisy = v + 0.02 * torch.randn(v.shape, generator=gen)
    assert normal_consistency(v, f) < normal_consistency(noisy, f)
    assert laplacian_smoothness(v, f) < laplacian_smoothness(noisy, f)
    # A flat fan has no crease at all.
    flat_v = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [-1, 0, 0], [0, -1, 0]])
    flat_f = torch.tensor([[0, 1, 2], [0, 2, 3], [0, 3, 4], [0, 4, 1]])
    assert normal_consistency(flat_v, flat_f) < 1e-6
    noisy.requires_grad_(True)
    (normal_consistency(noisy, f) + laplacian_smoothness(noisy, f)).backward()
    assert torch.isfinite(noisy.grad).all() and noisy.grad.abs().sum() > 0
    # The fine stage hands both the edges it found once; the values are the same.
    edges = mesh_edges(f)
    assert normal_consistency(noisy, f, edges) == normal_consistency(noisy, f)
    assert laplacian_smoothness(noisy, f, edges) == laplacian_smoothness(noisy, f)


def test_sdf_from_density_is_a_distance_and_drops_floaters():
    # A ball of radius 0.5 plus a small far blob, both under haze just below the threshold.
    def density(p):
        ball = soft_ball(p, radius=0.5, peak=40.0)
        floater = 40.0 * torch.sigmoid((0.12 - (p - torch.tensor([0.8, 0.8, 0.8])).norm(dim=-1)) / 0.03)
        return ball + floater + 5.0

    kept_all, largest = DMTet(48), DMTet(48)
    kept_all.init_from_density(density, threshold=15.0)
    largest.init_from_density(density, threshold=15.0, keep_largest=True)
    assert check_closed_manifold(*kept_all.extract()) == 4  # two spheres
    v, f = largest.extract()
    assert check_closed_manifold(v, f) == 2 and float(v.norm(dim=-1).max()) < 0.6
    # Away from the surface the SDF is the distance to the ball, not the flat haze value.
    r = largest.grid_vertices.norm(dim=-1)
    far = (r - 0.5).abs() > 2 * largest.cell
    expected = (r[far] - 0.5).clamp(max=1.0)  # clamped at the bound: only the sign matters that far
    assert (largest.sdf[far] - expected).abs().max() < 1.2 * largest.cell


def test_density_init_fills_a_hollow_nerf():
    # A ball whose inside density fell below the threshold: a shell 0.2 thick, r in (0.4, 0.6).
    def density(p):
        r = p.norm(dim=-1)
        return 40.0 * torch.sigmoid((0.6 - r) / 0.02) * torch.sigmoid((r - 0.4) / 0.02)

    hollow, solid = DMTet(48), DMTet(48)
    hollow.init_from_density(density, threshold=15.0, keep_largest=True)
    solid.init_from_density(density, threshold=15.0, keep_largest=True, fill_hidden=True)
    assert check_closed_manifold(*hollow.extract()) == 4  # outer and inner sphere
    v, f = solid.extract()
    assert check_closed_manifold(v, f) == 2 and float(v.norm(dim=-1).min()) > 0.5
    assert float(solid.sdf[solid.grid_vertices.norm(dim=-1) < 0.3].max()) < 0


def test_mesh_edges_are_each_undirected_edge_once_in_row_order():
    from magic3d.fields.dmtet import mesh_edges

    dmtet = DMTet(16)
    with torch.no_grad():
        dmtet.sdf.copy_(dmtet.grid_vertices.norm(dim=-1) - 0.6)
    _, faces = dmtet.extract()
    edges, face_edge = mesh_edges(faces)
    half = torch.stack([faces, faces.roll(-1, dims=1)], dim=-1).reshape(-1, 2).sort(-1).values
    expected, inverse = torch.unique(half, dim=0, return_inverse=True)
    assert torch.equal(edges, expected) and torch.equal(face_edge, inverse.view(-1, 3))
    assert edges.shape[0] == faces.shape[0] * 3 // 2  # a closed surface: every edge shared by two faces
