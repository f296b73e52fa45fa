"""The dense grid encoding: exact trilinear values, gradients into every level, the config key, CUDA placement."""

from __future__ import annotations

import pytest
import torch
from device_harness import DeviceHarness

from magic3d.config import load_config
from magic3d.config_sections import FieldConfig
from magic3d.errors import ConfigError
from magic3d.fields.encoding import DenseGridEncoding
from magic3d.fields.nerf import NeRFField


def test_values_are_trilinear_in_each_level_and_shapes_follow_the_input():
    torch.manual_seed(0)
    enc = DenseGridEncoding(levels=3, features=2, min_res=4, max_res=9)
    assert enc.resolutions == [4, 6, 9]
    with torch.no_grad():
        for grid in enc.grids:
            grid.copy_(torch.randn_like(grid))
    x = torch.rand(7, 5, 3)
    out = enc(x)
    assert out.shape == (7, 5, 6)
    # At a grid vertex the value is that voxel's feature; midway along x, the mean of two voxels.
    r = enc.resolutions[2]
    grid = enc.grids[2][0]  # F D H W, indexed (z, y, x)
    vertex = torch.tensor([[2.0, 3.0, 5.0]]) / (r - 1)
    assert torch.allclose(enc(vertex)[0, 4:6], grid[:, 5, 3, 2], atol=1e-5)
    mid = torch.tensor([[2.5, 3.0, 5.0]]) / (r - 1)
    assert torch.allclose(enc(mid)[0, 4:6], (grid[:, 5, 3, 2] + grid[:, 5, 3, 3]) / 2, atol=1e-5)


def test_gradients_reach_every_level_near_the_points_only():
    enc = DenseGridEncoding(levels=2, features=2, min_res=4, max_res=8)
    enc(torch.full((1, 3), 0.1)).sum().backward()
    for grid in enc.grids:  # sides 4 and 8: the point lies inside the first voxel of each
        touched = grid.grad.abs().sum(1)[0] > 0
        assert int(touched.sum()) == 8 and touched[:2, :2, :2].all()  # that voxel's eight corners


def test_the_field_takes_the_encoding_from_its_config_and_refuses_a_bad_one():
    field = NeRFField(FieldConfig(encoding="dense", levels=4, max_res=32, hidden=16))
    assert isinstance(field.encoding, DenseGridEncoding)
    sigma, albedo = field.density_and_albedo(torch.rand(10, 3) * 2 - 1)
    assert sigma.shape == (10,) and albedo.shape == (10, 3)
    assert load_config("builtin").coarse.field.encoding == "hashgrid"  # until the evaluation says dense holds
    assert load_config("builtin", ["coarse.field.encoding=dense", "coarse.field.max_res=64"]).coarse.field.encoding \
        == "dense"
    assert load_config("paper").coarse.field.encoding == "hashgrid"
    with pytest.raises(ConfigError, match="'coarse.field.encoding' must be one of 'hashgrid', 'dense'"):
        load_config("builtin", ["coarse.field.encoding=voxels"])
    with pytest.raises(ConfigError, match="coarse.field.max_res") as err:
        load_config("builtin", ["coarse.field.encoding=dense", "coarse.field.max_res=1024"])
    assert "\n" not in str(err.value)


def test_every_grid_lives_on_the_run_device():
    with DeviceHarness():
        device = torch.device("cuda")
        field = NeRFField(FieldConfig(encoding="dense", levels=3, max_res=16, hidden=8), device).to(device)
        points = torch.rand(20, 3, device=device) * 2 - 1
        sigma, _ = field.density_and_albedo(points)
        sigma.sum().backward()
        assert all(g.grad is not None and g.grad.device.type == "cuda" for g in field.encoding.grids)


def test_no_points_give_no_features():
    # An occupancy grid that culls every sample of a batch hands the encoding zero points.
    enc = DenseGridEncoding(levels=3, features=2, min_res=4, max_res=16)
    assert enc(torch.zeros(0, 3)).shape == (0, 6)
    assert enc(torch.zeros(2, 0, 3)).shape == (2, 0, 6)
