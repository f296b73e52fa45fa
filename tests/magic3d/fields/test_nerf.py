"""The coarse field: our PyTorch hash-grid path agrees with nerfstudio's, the blob starts a solid."""

from __future__ import annotations

import torch
from nerfstudio.field_components.encodings import HashEncoding

from magic3d.fields.encoding import TorchHashEncoding
from magic3d.fields.nerf import FieldConfig, NeRFField


def test_fast_hash_encoding_matches_nerfstudio_values_and_gradients():
    torch.manual_seed(0)
    kw = dict(num_levels=6, min_res=4, max_res=200, log2_hashmap_size=10, features_per_level=2)
    ours, ref = TorchHashEncoding(**kw, implementation="torch"), HashEncoding(**kw, implementation="torch")
    with torch.no_grad():
        ref.hash_table.copy_(torch.randn_like(ref.hash_table))
        ours.hash_table.copy_(ref.hash_table)
    x = torch.rand(500, 3)
    x[:10] = torch.round(x[:10] * 4) / 4  # points exactly on grid vertices
    a, b = ours(x), ref(x)
    assert a.shape == (500, 12) and torch.allclose(a, b, atol=1e-5)
    w = torch.randn(12)
    (a * w).sum().backward()
    (b * w).sum().backward()
    assert torch.allclose(ours.hash_table.grad, ref.hash_table.grad, atol=1e-5)


def small_field(**kw) -> NeRFField:
    torch.manual_seed(0)
    return NeRFField(FieldConfig(levels=4, log2_hashmap_size=12, max_res=64, hidden=16, **kw))


def test_blob_makes_a_solid_centre_and_empty_corners():
    field = small_field()
    centre = torch.zeros(1, 3)
    corner = torch.full((1, 3), 0.95)
    assert field.density(centre).item() > 5.0
    assert field.density(corner).item() < 1e-3
    gauss = small_field(blob="gaussian", density_bias=-1.0)
    assert gauss.density(centre).item() > 5.0 and gauss.density(corner).item() < 0.5


def test_density_albedo_background_shapes_and_ranges():
    field = small_field()
    pts = torch.rand(64, 3) * 2 - 1
    sigma, albedo = field.density_and_albedo(pts)
    assert sigma.shape == (64,) and albedo.shape == (64, 3)
    assert (sigma >= 0).all() and ((albedo > 0) & (albedo < 1)).all()
    assert torch.allclose(sigma, field.density(pts)) and torch.allclose(albedo, field.albedo(pts))
    dirs = torch.nn.functional.normalize(torch.randn(10, 3), dim=-1)
    bg = field.background(dirs)
    assert bg.shape == (10, 3) and ((bg > 0) & (bg < 1)).all()
    assert not torch.allclose(bg[0], bg[1])  # depends on the view direction
    white = small_field(background="white").background(dirs)
    assert torch.equal(white, torch.ones(10, 3))
