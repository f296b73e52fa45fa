"""The PyTorch rasterizer draws a batch in one pass: each image must equal that image drawn alone."""

from __future__ import annotations

import torch
import trimesh

from renderers.cameras import orbit_cameras
from renderers.raster.torch_backend import TorchRasterizer


def torus_clip(views: int) -> tuple[torch.Tensor, torch.Tensor]:
    mesh = trimesh.creation.torus(0.6, 0.25, major_sections=24, minor_sections=12)
    verts = torch.as_tensor(mesh.vertices, dtype=torch.float32)
    faces = torch.as_tensor(mesh.faces, dtype=torch.int64)
    cams = orbit_cameras([20.0 + 10 * k for k in range(views)], [47.0 * k for k in range(views)], 3.0, 45.0, 48)
    homo = torch.cat([verts, torch.ones_like(verts[:, :1])], dim=-1)
    return homo @ cams.mvp().transpose(1, 2), faces


def test_a_batch_rasterizes_interpolates_and_antialiases_as_its_images_alone():
    raster = TorchRasterizer()
    clip, faces = torus_clip(4)
    clip.requires_grad_(True)
    rast = raster.rasterize(clip, faces, (48, 40))
    assert rast.shape == (4, 48, 40, 4) and (rast[..., 3] > 0).any(-1).any(-1).all()
    colour = torch.rand(4, 48, 40, 3, generator=torch.Generator().manual_seed(0))
    attrs = torch.rand(4, clip.shape[1], 2, generator=torch.Generator().manual_seed(1))
    batch_aa = raster.antialias(colour, rast, clip, faces)
    batch_attr = raster.interpolate(attrs, rast, faces)
    for b in range(4):
        alone = raster.rasterize(clip[b : b + 1], faces, (48, 40))
        assert torch.equal(alone[0, ..., 3], rast[b, ..., 3])  # the same triangle wins every pixel
        assert torch.allclose(alone[0], rast[b], atol=1e-6)
        # Stacked images move image b down b * H rows: edge crossings round a little differently.
        assert torch.allclose(raster.antialias(colour[b : b + 1], alone, clip[b : b + 1], faces)[0], batch_aa[b],
                              atol=1e-4)
        assert torch.allclose(raster.interpolate(attrs[b : b + 1], alone, faces)[0], batch_attr[b], atol=1e-6)
    assert not torch.allclose(batch_aa[0], colour[0])  # silhouettes were blended
    batch_aa.sum().backward()  # silhouettes give the vertices gradients through the batched pass
    assert clip.grad is not None and clip.grad.abs().sum() > 0
