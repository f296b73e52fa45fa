"""The coarse stage end to end: it makes a shape from images, resumes exactly, and survives NaNs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from magic3d.errors import RunError
from magic3d.fields.nerf import FieldConfig
from magic3d.guidance.base import SDSConfig, SDSOutput, TextEmbeddings
from magic3d.stages.coarse import CoarseConfig, load_coarse_field, run_coarse
from magic3d.stages.losses import SDSLoss
from renderers.cameras import orbit_cameras
from renderers.volume import render_rays

RADIUS = 0.6


def analytic_sphere(cams):
    """Ground truth without our renderer: NumPy ray-sphere hits, colour from the surface normal."""
    o, d = (t.reshape(-1, 3).double().numpy() for t in cams.rays())
    b = (o * d).sum(-1)
    disc = b * b - ((o * o).sum(-1) - RADIUS**2)
    hit = disc > 0
    p = o + d * (-b - np.sqrt(np.clip(disc, 0, None)))[:, None]
    colour = np.clip(0.5 + 0.45 * p / RADIUS * np.array([1.0, 1.0, -1.0]), 0.0, 1.0)
    rgb = np.where(hit[:, None], colour, 1.0)
    shape = (len(cams), cams.height, cams.width)
    return torch.tensor(rgb, dtype=torch.float32).view(*shape, 3), torch.tensor(hit).view(shape)


def image_loss(rgb, cams, step_ratio, generator, shading="albedo"):
    target, _ = analytic_sphere(cams)
    loss = (rgb - target).square().mean()
    return loss, {"mse": float(loss.detach())}


def small_cfg(**kw) -> CoarseConfig:
    field = FieldConfig(levels=8, log2_hashmap_size=14, max_res=128, hidden=32)
    base = dict(steps=6, batch_size=1, resolution=16, samples_per_ray=16, lr=0.02, field=field,
                albedo_warmup=2, checkpoint_every=2, occupancy_every=2, occupancy_resolution=16, preview_views=2)
    base.update(kw)
    return CoarseConfig(**base)


def training_views(res: int, batch: int):
    el = torch.tensor([-10.0, 10.0, 30.0, 50.0] * 5)
    az = torch.arange(20) * 18.0  # 20 views around the sphere

    def sampler(step, generator):
        idx = torch.randint(0, len(el), (batch,), generator=generator)
        return orbit_cameras(el[idx], az[idx], 3.2, 45.0, res)

    return sampler


@pytest.mark.slow
def test_fits_a_coloured_sphere_from_images(tmp_path):
    res = 32
    # A grid no finer than the training pixels resolve (48 cells across the box at 32 px): finer
    # levels only add colour noise between the training views.
    field = FieldConfig(levels=6, log2_hashmap_size=14, max_res=48, hidden=32)
    cfg = small_cfg(steps=150, batch_size=2, resolution=res, samples_per_ray=32, albedo_warmup=10**6, field=field,
                    checkpoint_every=150, occupancy_every=16, occupancy_resolution=32)
    field = run_coarse(image_loss, cfg, tmp_path, "cpu", seed=0, camera_sampler=training_views(res, 2)).field
    # Novel views: between the training azimuths and elevations.
    cams = orbit_cameras([20.0, 0.0, 40.0], [9.0, 100.0, 225.0], 3.2, 45.0, res)
    o, d = (t.reshape(-1, 3) for t in cams.rays())
    with torch.no_grad():
        out = render_rays(field.density_and_albedo, field.density, o, d, samples=32, perturb=False,
                          background=field.background(d))
    target, hit = analytic_sphere(cams)
    mask = out.opacity.view(hit.shape) > 0.5
    iou = float((mask & hit).sum() / (mask | hit).sum())
    err = float((out.rgb.view(target.shape) - target).abs().mean(-1)[mask & hit].mean())
    assert iou >= 0.9, iou
    assert err < 0.05, err


def test_resumed_run_equals_uninterrupted_run(tmp_path):
    cfg = small_cfg()
    sampler = training_views(16, 1)
    straight = run_coarse(image_loss, cfg, tmp_path / "a", "cpu", seed=3, camera_sampler=sampler).field
    run_coarse(image_loss, small_cfg(steps=4), tmp_path / "b", "cpu", seed=3, camera_sampler=sampler)
    resumed = run_coarse(image_loss, cfg, tmp_path / "b", "cpu", seed=3, camera_sampler=sampler).field
    a, b = straight.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6, rtol=0), key
    # Also with random orbit cameras and shading modes drawn by the stage itself.
    orbit = small_cfg(steps=5, checkpoint_every=3, shading=(0.2, 0.4, 0.4))
    straight = run_coarse(image_loss, orbit, tmp_path / "c", "cpu", seed=1).field
    run_coarse(image_loss, small_cfg(steps=3, shading=(0.2, 0.4, 0.4)), tmp_path / "d", "cpu", seed=1)
    resumed = run_coarse(image_loss, orbit, tmp_path / "d", "cpu", seed=1).field
    for key, value in straight.state_dict().items():
        assert torch.allclose(value, resumed.state_dict()[key], atol=1e-6, rtol=0), key
    # And a different seed really gives a different run (the check above can fail).
    other = run_coarse(image_loss, orbit, tmp_path / "e", "cpu", seed=2).field
    assert not torch.allclose(other.encoding.hash_table, straight.encoding.hash_table)


def test_checkpoints_previews_and_reload(tmp_path):
    seen = []
    cfg = small_cfg(preview_every=3)
    result = run_coarse(image_loss, cfg, tmp_path, "cpu", seed=0, camera_sampler=training_views(16, 1),
                        progress=lambda *a: seen.append(a))
    assert [s[1] for s in seen] == [1, 2, 3, 4, 5, 6] and {s[0] for s in seen} == {"coarse"}
    ckpts = sorted(p.name for p in (tmp_path / "checkpoints").glob("coarse-*.safetensors"))
    assert ckpts == ["coarse-000004.safetensors", "coarse-000006.safetensors"]
    sidecar = json.loads((tmp_path / "checkpoints" / "coarse-000006.json").read_text())
    assert sidecar["step"] == 6 and "param_groups" in sidecar["state"] and "rng" in sidecar["state"]
    from PIL import Image

    previews = sorted((tmp_path / "previews").glob("coarse-*.png"))
    assert [p.name for p in previews] == ["coarse-000003.png", "coarse-000006.png"]
    image = np.asarray(Image.open(previews[-1]))
    assert image.shape == (32, 32, 3) and image.std() > 1.0  # 2 modes x 2 views of 16 px
    assert "mse" in result.metrics and np.isfinite(result.metrics["loss"])

    field = load_coarse_field(tmp_path, cfg, "cpu")
    for key, value in result.field.state_dict().items():
        assert torch.equal(value, field.state_dict()[key]), key
    with pytest.raises(RunError, match="No coarse checkpoint"):
        load_coarse_field(tmp_path / "empty", cfg, "cpu")
    other = small_cfg(field=FieldConfig(levels=4, log2_hashmap_size=12, max_res=64, hidden=16))
    with pytest.raises(RunError, match="does not fit the current coarse config"):
        load_coarse_field(tmp_path, other, "cpu")


class NaNAt:
    def __init__(self, step: int, times: int) -> None:
        self.step, self.left, self.calls = step, times, 0

    def __call__(self, rgb, cams, ratio, generator, shading="albedo"):
        loss, metrics = image_loss(rgb, cams, ratio, generator)
        self.calls += 1
        if self.calls == self.step + 1 and self.left > 0:
            self.left -= 1
            self.calls = 0 if self.left else self.calls  # a second NaN hits the same step again
            return loss * float("nan"), metrics
        return loss, metrics


def test_nan_rolls_back_once_then_fails_clearly(tmp_path):
    cfg = small_cfg(steps=6, checkpoint_every=2)
    result = run_coarse(NaNAt(3, 1), cfg, tmp_path / "once", "cpu", seed=0, camera_sampler=training_views(16, 1))
    assert all(torch.isfinite(v).all() for v in result.field.state_dict().values())
    state = json.loads((tmp_path / "once" / "checkpoints" / "coarse-000006.json").read_text())["state"]
    assert state["lr_scale"] == 0.5 and state["nan_events"] == 1
    assert state["param_groups"][0]["lr"] == pytest.approx(cfg.lr * 0.5)

    with pytest.raises(RunError, match="diverged twice"):
        run_coarse(NaNAt(3, 2), cfg, tmp_path / "twice", "cpu", seed=0, camera_sampler=training_views(16, 1))


class FakePrior:
    """Records what the SDS loss hands a prior; its 'gradient' pulls every pixel towards grey."""

    name, resolution, device = "fake", 24, torch.device("cpu")

    def __init__(self) -> None:
        self.seen = []

    def sds(self, images, embeddings, step_ratio, cfg, generator=None):
        self.seen.append((images.shape, embeddings.cond[:, 0].tolist(), step_ratio, cfg.guidance_scale))
        grad = (images - 0.5).detach()
        loss = (images * grad).sum()
        return SDSOutput(loss=loss, t=torch.full((images.shape[0],), 500), grad_norm=float(grad.norm()))


class FakeViewPrompts:
    def for_cameras(self, cameras, shading="albedo"):
        codes = {"front": 0.0, "side": 1.0, "back": 2.0, "overhead": 3.0}
        shift = 10.0 if shading == "textureless" else 0.0
        cond = torch.tensor([[codes[b] + shift] for b in cameras.view_buckets()])
        return TextEmbeddings(cond, torch.zeros_like(cond))


def test_sds_loss_resizes_and_picks_view_prompts(tmp_path):
    prior = FakePrior()
    loss_fn = SDSLoss(prior, FakeViewPrompts(), SDSConfig(guidance_scale=7.5))
    cams = orbit_cameras([0.0, 0.0, 80.0], [0.0, 180.0, 0.0], 3.0, 50.0, 16)
    rgb = torch.rand(3, 16, 16, 3, requires_grad=True)
    loss, metrics = loss_fn(rgb, cams, 0.25, torch.Generator().manual_seed(0))
    shape, codes, ratio, scale = prior.seen[0]
    assert shape == (3, 3, 24, 24) and codes == [0.0, 2.0, 3.0] and ratio == 0.25 and scale == 7.5
    loss.backward()
    assert rgb.grad is not None and rgb.grad.abs().sum() > 0
    assert set(metrics) == {"sds", "t", "grad_norm"} and metrics["t"] == 500
    # Textureless renders are scored against the shape prompt.
    loss_fn(rgb.detach(), cams, 0.25, torch.Generator().manual_seed(0), shading="textureless")
    assert prior.seen[1][1] == [10.0, 12.0, 13.0]
    # Through the stage: a couple of SDS steps run and checkpoint.
    run_coarse(loss_fn, small_cfg(steps=2), tmp_path, "cpu", seed=0)
    assert len(prior.seen) == 4 and (tmp_path / "checkpoints" / "coarse-000002.safetensors").is_file()


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_steps_keep_fp32_parameters_and_fit(precision, tmp_path):
    """Autocast (fp16 with its gradient scaler) on the coarse stage: parameters stay fp32 and the
    loss of a fit falls as in fp32. CPU autocast stands in for CUDA's here."""
    from magic3d.stages.loop import autocast_dtype

    assert autocast_dtype("auto", torch.device("cpu")) is None
    assert autocast_dtype(precision, torch.device("cpu")) == {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    cfg = small_cfg(steps=30, checkpoint_every=100)
    losses: list[float] = []
    result = run_coarse(image_loss, cfg, tmp_path, "cpu", seed=0, camera_sampler=training_views(16, 1),
                        progress=lambda stage, step, total, loss: losses.append(loss), precision=precision)
    assert all(p.dtype == torch.float32 for p in result.field.parameters())
    assert all(np.isfinite(losses)) and len(losses) == 30
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])
