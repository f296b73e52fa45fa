"""The volume renderer against analytic answers."""

from __future__ import annotations

import math

import torch

from renderers.volume import OccupancyGrid, ray_sphere, render_rays


def uniform_sphere(s: float, r: float):
    def density(p):
        return torch.where(p.norm(dim=-1) < r, torch.full_like(p[:, 0], s), torch.zeros_like(p[:, 0]))

    def field(p):
        return density(p), torch.full_like(p, 0.5)

    return field, density


def centre_ray(n: int = 1):
    origins = torch.tensor([[0.0, 0.0, 3.0]]).expand(n, 3)
    dirs = torch.tensor([[0.0, 0.0, -1.0]]).expand(n, 3)
    return origins, dirs


def test_opacity_of_uniform_sphere_through_centre():
    for s, r in ((0.5, 0.8), (2.0, 0.5), (1.0, 1.0)):
        field, density = uniform_sphere(s, r)
        origins, dirs = centre_ray()
        out = render_rays(field, density, origins, dirs, samples=512, bound=r, perturb=False)
        expected = 1 - math.exp(-2 * s * r)
        assert abs(out.opacity.item() - expected) < 0.01 * expected


def test_missing_ray_has_zero_opacity_and_background_colour():
    field, density = uniform_sphere(5.0, 0.5)
    origins = torch.tensor([[0.0, 2.0, 3.0]])
    dirs = torch.tensor([[0.0, 0.0, -1.0]])
    out = render_rays(field, density, origins, dirs, samples=64, bound=1.0, background=0.25)
    assert out.opacity.item() == 0.0
    assert torch.allclose(out.rgb, torch.full((1, 3), 0.25))


def test_expected_depth_of_thin_shell_is_its_radius():
    radius, width = 0.6, 0.02

    def density(p):
        d = (p.norm(dim=-1) - radius).abs()
        return torch.where(d < width / 2, torch.full_like(d, 400.0), torch.zeros_like(d))

    def field(p):
        return density(p), torch.ones_like(p)

    origins, dirs = centre_ray()
    out = render_rays(field, density, origins, dirs, samples=1024, bound=1.0, perturb=False)
    assert out.opacity.item() > 0.99
    assert abs(out.depth.item() - (3.0 - radius)) < 0.01


def test_weights_never_sum_above_one_and_occupancy_sampling_is_accurate():
    field, density = uniform_sphere(50.0, 0.4)
    gen = torch.Generator().manual_seed(0)
    origins = torch.randn(256, 3, generator=gen)
    origins = origins / origins.norm(dim=-1, keepdim=True) * 3
    target = torch.randn(256, 3, generator=gen) * 0.3
    dirs = torch.nn.functional.normalize(target - origins, dim=-1)
    grid = OccupancyGrid(resolution=16, bound=1.0, threshold=0.5)
    occupied = grid.update(density, gen)
    assert occupied < 0.2
    full = render_rays(field, density, origins, dirs, samples=128, generator=gen, perturb=False)
    culled = render_rays(field, density, origins, dirs, samples=128, occupancy=grid, perturb=False)
    assert (full.weights.sum(-1) <= 1 + 1e-6).all() and (culled.weights.sum(-1) <= 1 + 1e-6).all()
    # Against the exact chord through the sphere: the culled renderer, which spends all its samples
    # in occupied cells, is at least as accurate as sampling the whole ray.
    miss = (origins - (origins * dirs).sum(-1, keepdim=True) * dirs).norm(dim=-1)
    chord = 2 * torch.sqrt((0.4**2 - miss**2).clamp(min=0))
    exact = 1 - torch.exp(-50.0 * chord)
    err_full = (full.opacity[:, 0] - exact).abs()
    err_culled = (culled.opacity[:, 0] - exact).abs()
    assert err_culled.mean() <= err_full.mean() and err_culled.mean() < 0.01


def test_ray_sphere_bounds():
    near, far, hit = ray_sphere(torch.tensor([[0.0, 0.0, 3.0]]), torch.tensor([[0.0, 0.0, -1.0]]), 1.0)
    assert hit.item() and abs(near.item() - 2.0) < 1e-6 and abs(far.item() - 4.0) < 1e-6


def test_diffuse_shading_darkens_the_side_away_from_light():
    def density(p):
        return 80.0 * torch.sigmoid((0.5 - p.norm(dim=-1)) / 0.02)

    def field(p):
        return density(p), torch.ones_like(p)

    origins = torch.tensor([[0.3, 0.0, 3.0], [-0.3, 0.0, 3.0]])
    dirs = torch.tensor([[0.0, 0.0, -1.0], [0.0, 0.0, -1.0]])
    light = torch.tensor([[5.0, 0.0, 0.5], [5.0, 0.0, 0.5]])
    out = render_rays(field, density, origins, dirs, samples=256, mode="textureless", light_position=light,
                      perturb=False, background=0.0)
    assert out.rgb[0].mean() > out.rgb[1].mean() + 0.05


def test_normals_of_a_sphere_point_outwards_where_rays_hit():
    def density(p):
        return 200.0 * torch.sigmoid((0.5 - p.norm(dim=-1)) / 0.01)

    def field(p):
        return density(p), torch.ones_like(p)

    gen = torch.Generator().manual_seed(1)
    xy = (torch.rand(64, 2, generator=gen) - 0.5) * 0.6
    origins = torch.cat([xy, torch.full((64, 1), 3.0)], dim=-1)
    dirs = torch.tensor([[0.0, 0.0, -1.0]]).expand(64, 3)
    out = render_rays(field, density, origins, dirs, samples=256, mode="diffuse", perturb=False, normal_eps=1e-3)
    z = torch.sqrt(0.25 - (xy * xy).sum(-1))
    expected = torch.cat([xy, z[:, None]], dim=-1) / 0.5
    cosine = (out.normals * expected).sum(-1)
    assert out.opacity.min() > 0.99 and cosine.min() > 0.98


def test_random_dense_fields_keep_weights_between_zero_and_one():
    gen = torch.Generator().manual_seed(2)
    grid = torch.rand(8, 8, 8, generator=gen) * 500.0

    def density(p):
        cell = ((p + 1) * 4).long().clamp(0, 7)
        return grid[cell[:, 0], cell[:, 1], cell[:, 2]]

    def field(p):
        return density(p), torch.rand(p.shape, generator=gen)

    origins = torch.nn.functional.normalize(torch.randn(128, 3, generator=gen), dim=-1) * 2.5
    dirs = torch.nn.functional.normalize(torch.randn(128, 3, generator=gen) * 0.3 - origins, dim=-1)
    out = render_rays(field, density, origins, dirs, samples=96, generator=gen)
    assert (out.weights >= 0).all() and (out.weights.sum(-1) <= 1 + 1e-6).all()
    assert ((out.rgb >= 0) & (out.rgb <= 1 + 1e-6)).all()


def test_occupancy_grid_sends_most_queries_near_the_surface():
    radius, queried = 0.3, []

    def density(p):
        return torch.where(p.norm(dim=-1) < radius, torch.full_like(p[:, 0], 30.0), torch.zeros_like(p[:, 0]))

    def field(p):
        queried.append(p)
        return density(p), torch.ones_like(p)

    gen = torch.Generator().manual_seed(3)
    origins = torch.tensor([[0.0, 0.0, 3.0]]).expand(200, 3)
    target = torch.cat([(torch.rand(200, 2, generator=gen) - 0.5) * 0.5, torch.zeros(200, 1)], dim=-1)
    dirs = torch.nn.functional.normalize(target - origins, dim=-1)
    grid = OccupancyGrid(resolution=32, bound=1.0, threshold=1.0)
    grid.update(density, gen)
    render_rays(field, density, origins, dirs, samples=64, generator=gen)
    render_rays(field, density, origins, dirs, samples=64, occupancy=grid, generator=gen)
    full, culled = queried

    def near_object(p):
        return (p.norm(dim=-1) < radius + 0.15).float().mean()

    def spacing(p):
        return (p[1:] - p[:-1]).norm(dim=-1).median()

    # Same budget of field queries, but with the grid nearly all of them land on the object,
    # spaced more finely.
    assert culled.shape[0] <= full.shape[0]
    assert near_object(culled) > 0.95 and near_object(full) < 0.5
    assert spacing(culled) < 0.5 * spacing(full)
