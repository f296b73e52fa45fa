"""SDS maths: annealed timesteps, weightings, guidance (CFG and Perp-Neg), exact gradients."""

from __future__ import annotations

import pytest
import torch

from magic3d.guidance.base import SDSConfig
from magic3d.guidance.sds import (
    guided_noise,
    sample_noise,
    sample_timesteps,
    sds_loss,
    sds_weight,
    timestep_range,
)


def test_t_max_anneals_linearly_to_t_max_end():
    cfg = SDSConfig(t_min=0.02, t_max=0.98, t_max_end=0.5)
    assert timestep_range(0.0, cfg) == pytest.approx((0.02, 0.98))
    assert timestep_range(0.5, cfg) == pytest.approx((0.02, 0.74))
    assert timestep_range(1.0, cfg) == pytest.approx((0.02, 0.5))
    assert timestep_range(3.0, cfg) == pytest.approx((0.02, 0.5))  # clamped past the end
    assert timestep_range(0.7, SDSConfig(t_min=0.02, t_max=0.98)) == pytest.approx((0.02, 0.98))


def test_sampled_timesteps_stay_in_the_annealed_range_and_replay_with_a_seed():
    cfg = SDSConfig(t_min=0.02, t_max=0.98, t_max_end=0.5)
    early = sample_timesteps(20000, 0.0, cfg, 1000, torch.Generator().manual_seed(0))
    late = sample_timesteps(20000, 1.0, cfg, 1000, torch.Generator().manual_seed(0))
    assert early.dtype == torch.long and early.shape == (20000,)
    assert int(early.min()) == 20 and int(early.max()) == 979  # both ends reachable
    assert int(late.min()) == 20 and int(late.max()) == 500
    again = sample_timesteps(20000, 0.0, cfg, 1000, torch.Generator().manual_seed(0))
    assert torch.equal(early, again)
    fixed = sample_timesteps(8, 0.3, SDSConfig(t_min=0.5, t_max=0.5), 1000)
    assert torch.all(fixed == 500)


def test_weightings():
    a = torch.linspace(0.999, 0.001, 1000)
    t = torch.tensor([0, 250, 999])
    assert torch.equal(sds_weight(a, t, "uniform"), torch.ones(3))
    assert torch.allclose(sds_weight(a, t, "sds"), 1 - a[t])
    assert torch.allclose(sds_weight(a, t, "dreamfusion"), a[t].sqrt() * (1 - a[t]))
    with pytest.raises(ValueError):
        sds_weight(a, t, "nope")  # type: ignore[arg-type]


def test_guidance_scale_one_is_the_conditional_prediction_and_zero_the_unconditional():
    g = torch.Generator().manual_seed(1)
    u, c = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    assert torch.allclose(guided_noise(u, c, 1.0), c, atol=1e-6)
    assert torch.equal(guided_noise(u, c, 0.0), u)
    assert torch.allclose(guided_noise(u, c, 7.5), u + 7.5 * (c - u))


def test_perp_neg_removes_only_the_perpendicular_part_of_negative_views():
    g = torch.Generator().manual_seed(2)
    u, c = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 4, 8, 8, generator=g)
    delta = c - u
    # A negative view parallel to the prompt's direction changes nothing ...
    parallel = (u + 0.3 * delta).unsqueeze(1)
    assert torch.allclose(guided_noise(u, c, 5.0, parallel, torch.ones(1, 1)), guided_noise(u, c, 5.0), atol=1e-5)
    # ... a perpendicular one is subtracted in full, times its weight and the scale.
    other = torch.randn(1, 4, 8, 8, generator=g)
    perp = other - (other * delta).sum() / (delta * delta).sum() * delta
    out = guided_noise(u, c, 5.0, (u + perp).unsqueeze(1), torch.full((1, 1), 0.5))
    assert torch.allclose(out, u + 5.0 * (delta - 0.5 * perp), atol=1e-5)
    assert abs(float(((out - u - 5.0 * delta) * delta).sum())) < 1e-3  # correction is orthogonal to delta
    # Zero weight (overhead views) is plain CFG; missing weights mean 1.
    assert torch.allclose(guided_noise(u, c, 5.0, (u + perp).unsqueeze(1), torch.zeros(1, 1)), guided_noise(u, c, 5.0))
    assert torch.allclose(guided_noise(u, c, 5.0, (u + perp).unsqueeze(1)), u + 5.0 * (delta - perp), atol=1e-5)


def test_sds_loss_backward_gives_exactly_the_gradient():
    g = torch.Generator().manual_seed(3)
    x = (100.0 * torch.randn(2, 4, 8, 8, generator=g)).requires_grad_()  # large x: no rounding allowed
    grad = 1e-3 * torch.randn(2, 4, 8, 8, generator=g)
    loss, norm = sds_loss(x, grad)
    loss.backward()
    assert torch.equal(x.grad, grad)
    assert float(loss) == pytest.approx(0.5 * float((grad**2).sum()), rel=1e-6)
    assert norm == pytest.approx(float(grad.flatten(1).norm(dim=1).pow(2).mean().sqrt()), rel=1e-5)


def test_sds_loss_clips_and_zeroes_non_finite_gradients():
    x = torch.zeros(1, 1, 2, 2, requires_grad=True)
    grad = torch.tensor([[[[3.0, -5.0], [float("nan"), 0.25]]]])
    loss, _ = sds_loss(x, grad, grad_clip=1.0)
    loss.backward()
    assert torch.equal(x.grad, torch.tensor([[[[1.0, -1.0], [0.0, 0.25]]]]))
    with pytest.raises(ValueError):
        sds_loss(x, torch.zeros(1, 1, 3, 3))


def test_sds_loss_flows_through_a_differentiable_encoder():
    # The gradient arrives at the encoder's input through the chain rule: d/dimg = J^T grad.
    img = torch.randn(1, 3, 4, 4, requires_grad=True)
    weight = torch.randn(4, 3, 1, 1)
    latents = torch.nn.functional.conv2d(img, weight)
    grad = torch.randn(1, 4, 4, 4)
    sds_loss(latents, grad)[0].backward()
    expected = torch.einsum("bchw,cd->bdhw", grad, weight[:, :, 0, 0])
    assert torch.allclose(img.grad, expected, atol=1e-5)


def test_noise_is_float32_on_the_target_device_and_seeded():
    like = torch.zeros(1, dtype=torch.float16)
    a = sample_noise((2, 3), torch.Generator().manual_seed(4), like)
    b = sample_noise((2, 3), torch.Generator().manual_seed(4), like)
    assert a.dtype == torch.float32 and torch.equal(a, b)
