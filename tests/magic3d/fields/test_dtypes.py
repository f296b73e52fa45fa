"""Precision: fp16 features from a fused hash grid (tiny-cuda-nn's default) and bf16 priors on CPU."""

from __future__ import annotations

import pytest
import torch

from magic3d.fields.nerf import FieldConfig, NeRFField
from magic3d.fields.texture import TextureConfig, TextureField


def answer_in_fp16(encoding: torch.nn.Module) -> None:
    """Make a PyTorch hash grid answer as tiny-cuda-nn's does: fp16 features, fp32 table."""
    real = encoding.forward
    encoding.forward = lambda x: real(x).half()


@pytest.mark.parametrize("make", [
    lambda: NeRFField(FieldConfig(levels=4, log2_hashmap_size=10, max_res=64, hidden=16)),
    lambda: TextureField(TextureConfig(levels=4, log2_hashmap_size=10, max_res=64, hidden=16)),
], ids=["coarse-field", "texture-field"])
def test_fp16_grid_features_flow_through_fp32_fields(make):
    field = make()
    answer_in_fp16(field.encoding)
    points = torch.rand(256, 3) * 1.6 - 0.8
    out = field.density(points) if isinstance(field, NeRFField) else field(points)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    out.sum().backward()
    table = field.encoding.hash_table
    assert table.dtype == torch.float32 and table.grad is not None and table.grad.abs().sum() > 0
    assert all(p.grad.dtype == torch.float32 for p in field.mlp.parameters())


@pytest.mark.parametrize("family", ["sd", "if"])
def test_tiny_priors_in_bfloat16_give_finite_sds_on_fp32_parameters(family, tiny_prior_dir, tiny_if_dir):
    from magic3d.guidance import PriorConfig, SDSConfig, load_prior
    from magic3d.prompts import ViewPrompts
    from magic3d.stages.losses import SDSLoss
    from renderers.cameras import orbit_cameras

    folder = tiny_prior_dir if family == "sd" else tiny_if_dir
    cfg = PriorConfig(dtype="bfloat16")
    prior = load_prior(str(folder), cfg, torch.device("cpu"))
    assert next(prior.unet.parameters()).dtype == torch.bfloat16
    loss_fn = SDSLoss(prior, ViewPrompts.build("a red chair", prior, cfg), SDSConfig(guidance_scale=20.0))
    image = torch.nn.Parameter(torch.rand(2, 32, 32, 3))
    opt = torch.optim.Adam([image], lr=1e-2)
    cams = orbit_cameras([10.0, 20.0], [0.0, 180.0], 3.0, 45.0, 32)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for step in range(3):
        loss, metrics = loss_fn(image, cams, step / 3, gen)
        opt.zero_grad()
        loss.backward()
        assert image.grad.dtype == torch.float32 and torch.isfinite(image.grad).all() and image.grad.abs().sum() > 0
        opt.step()
        losses.append(float(loss))
    assert image.dtype == torch.float32 and all(torch.isfinite(torch.tensor(losses)))
    assert float(metrics["grad_norm"]) > 0
