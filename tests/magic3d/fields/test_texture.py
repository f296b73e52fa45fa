"""The texture field fits a procedural colour function on surface points and stays in [0, 1]."""

from __future__ import annotations

import torch
import trimesh

from magic3d.fields.texture import TextureConfig, TextureField, sample_surface

SMALL = TextureConfig(levels=6, log2_hashmap_size=13, min_res=4, max_res=64, hidden=32)


def stripes(points: torch.Tensor) -> torch.Tensor:
    """Colour varying smoothly in every channel, plus a sharp band in blue."""
    x, y, z = points.unbind(-1)
    return torch.stack([0.5 + 0.4 * torch.sin(3 * x), 0.5 + 0.4 * y, (z > 0.1).float() * 0.8 + 0.1], dim=-1)


def sphere_points(n: int, seed: int) -> torch.Tensor:
    mesh = trimesh.creation.icosphere(subdivisions=3, radius=0.6)
    return sample_surface(torch.tensor(mesh.vertices, dtype=torch.float32), torch.tensor(mesh.faces), n,
                          torch.Generator().manual_seed(seed))


def test_shapes_and_range():
    torch.manual_seed(0)
    field = TextureField(SMALL)
    out = field(torch.rand(100, 3) * 4 - 2)  # also outside the bound: clamped, still valid colours
    assert out.shape == (100, 3)
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1


def test_fits_a_procedural_colour_function_on_surface_points():
    torch.manual_seed(0)
    field = TextureField(SMALL)
    train = sphere_points(4000, seed=1)
    with torch.no_grad():
        before = float(((field(train) - stripes(train)) ** 2).mean())
    mse = field.fit(stripes, train, steps=120, lr=3e-2, batch=1024, generator=torch.Generator().manual_seed(0))
    held_out = sphere_points(2000, seed=2)
    with torch.no_grad():
        err = (field(held_out) - stripes(held_out)).abs()
    assert mse < 0.25 * before
    # Held-out points on the same surface: mean error well under a tenth of the colour range.
    assert err.mean() < 0.05, float(err.mean())


def test_surface_samples_lie_on_the_mesh_and_cover_it():
    points = sphere_points(4000, seed=3)
    radius = points.norm(dim=-1)
    assert radius.max() <= 0.6 + 1e-5 and radius.min() > 0.55  # on flat facets inside the sphere
    # Uniform by area: each octant gets about an eighth.
    octant = ((points > 0).long() * torch.tensor([1, 2, 4])).sum(-1)
    share = torch.bincount(octant, minlength=8).float() / points.shape[0]
    assert (share - 0.125).abs().max() < 0.03
