"""Fine stage: mesh extraction from a density, initialisation, checkpoints, previews and exact resume."""

from __future__ import annotations

import dataclasses
import math
import os

import numpy as np
import pytest
import torch
import trimesh

from magic3d.errors import RunError
from magic3d.fields.texture import TextureConfig, sample_surface
from magic3d.stages.fine import FineConfig, extract_mesh, run_fine
from renderers.cameras import Cameras, orbit_cameras
from renderers.mesh_render import render_mesh


class BallField:
    """Analytic stand-in for the coarse NeRF: a soft ball of density, coloured by height."""

    def __init__(self, radius: float = 0.5, peak: float = 30.0, width: float = 0.03) -> None:
        self.radius, self.peak, self.width = radius, peak, width

    def density(self, points: torch.Tensor) -> torch.Tensor:
        return self.peak * torch.sigmoid((self.radius - points.norm(dim=-1)) / self.width)

    def level_radius(self, threshold: float) -> float:
        """Where the density equals ``threshold``."""
        return self.radius + self.width * math.log(self.peak / threshold - 1.0)

    def albedo(self, points: torch.Tensor) -> torch.Tensor:
        y = points[:, 1:2].clamp(-1, 1)
        return torch.cat([0.5 + 0.4 * y, 0.3 + 0 * y, 0.5 - 0.4 * y], dim=-1)


TINY = FineConfig(
    steps=4, resolution=32, tet_resolution=24, checkpoint_every=2, texture_init_steps=20,
    texture_init_points=2000, texture=TextureConfig(levels=4, log2_hashmap_size=12, min_res=4, max_res=32, hidden=16),
)


def mean_rgb_loss(rgb, cameras, step_ratio, generator, shading="albedo"):
    loss = rgb.mean()
    return loss, {"mean_rgb": float(loss.detach())}


def closed(vertices: torch.Tensor, faces: torch.Tensor) -> trimesh.Trimesh:
    mesh = trimesh.Trimesh(vertices.numpy(), faces.numpy(), process=False)
    assert mesh.is_watertight and mesh.is_winding_consistent and mesh.volume > 0
    return mesh


def test_extract_mesh_uses_the_automatic_threshold_and_coarse_colours():
    field = BallField(radius=0.5)
    cfg = dataclasses.replace(TINY, tet_resolution=40, steps=0, surface="density")
    result = extract_mesh(field, cfg, "cpu")
    closed(result.vertices, result.faces)
    thr = result.metrics["density_threshold"]
    assert 0.1 * field.peak < thr < 0.6 * field.peak
    assert (result.vertices.norm(dim=-1) - field.level_radius(thr)).abs().max() < 2.0 / 20
    points = result.vertices[:50]
    assert torch.allclose(result.color_fn(points), field.albedo(points))
    # An explicit threshold is used as given: a higher level makes a smaller ball.
    high = extract_mesh(field, dataclasses.replace(cfg, density_threshold=29.0), "cpu")
    assert high.metrics["density_threshold"] == 29.0
    assert high.vertices.norm(dim=-1).mean() < result.vertices.norm(dim=-1).mean()


def test_extract_mesh_by_sight_finds_the_ball_the_renders_show():
    field = BallField(radius=0.5)
    result = extract_mesh(field, dataclasses.replace(TINY, tet_resolution=40, steps=0, surface="sight"), "cpu")
    closed(result.vertices, result.faces)
    assert result.metrics["sight_depth"] == pytest.approx(math.log(2.0))
    # Half the light is gone a hair inside the ball's edge (density 15 at r = 0.5, 30 within).
    assert (result.vertices.norm(dim=-1) - 0.5).abs().max() < 2.0 / 20


def test_bound_reach_tells_an_object_from_a_field_solid_to_its_box():
    ball = extract_mesh(BallField(radius=0.5), dataclasses.replace(TINY, tet_resolution=40, steps=0), "cpu")
    assert ball.metrics["bound_reach"] == pytest.approx(float(ball.vertices.abs().max()))
    assert 0.45 < ball.metrics["bound_reach"] < 0.6
    # Solid everywhere: DMTet closes the surface within a cell of the box, which the metric reads as ~1.
    boxed = extract_mesh(BallField(radius=3.0), dataclasses.replace(TINY, tet_resolution=40, steps=0,
                                                                     density_threshold=1.0), "cpu")
    closed(boxed.vertices, boxed.faces)
    assert boxed.metrics["bound_reach"] > 0.95


def test_empty_coarse_density_is_a_run_error():
    class Empty(BallField):
        def density(self, points):
            return torch.zeros(points.shape[0])

    with pytest.raises(RunError, match="density"):
        extract_mesh(Empty(), TINY, "cpu")
    with pytest.raises(RunError, match="seen through from every camera"):
        extract_mesh(Empty(), dataclasses.replace(TINY, surface="sight"), "cpu")


def test_zero_steps_still_initialises_the_texture_from_the_coarse_albedo(tmp_path):
    field = BallField()
    cfg = dataclasses.replace(TINY, steps=0, texture_init_steps=150)
    result = run_fine(field, mean_rgb_loss, cfg, tmp_path, "cpu", seed=0)
    closed(result.vertices, result.faces)
    err = (result.color_fn(result.vertices) - field.albedo(result.vertices)).abs().mean()
    assert err < 0.05, float(err)
    assert result.metrics["texture_init_mse"] < 0.01
    assert not (tmp_path / "checkpoints").exists()


def test_run_writes_checkpoints_and_previews_and_resumes_exactly(tmp_path):
    field = BallField()
    whole = run_fine(field, mean_rgb_loss, TINY, tmp_path / "whole", "cpu", seed=3)
    ckpts = sorted(p.name for p in (tmp_path / "whole" / "checkpoints").glob("fine-*.safetensors"))
    assert ckpts == ["fine-000002.safetensors", "fine-000004.safetensors"]
    assert (tmp_path / "whole" / "previews" / "fine-000004.png").is_file()
    closed(whole.vertices, whole.faces)
    assert whole.metrics["faces"] == whole.faces.shape[0] and "mean_rgb" in whole.metrics

    # Interrupted after 2 steps, then resumed to 4: the same mesh and colours as the uninterrupted run.
    run_fine(field, mean_rgb_loss, dataclasses.replace(TINY, steps=2), tmp_path / "split", "cpu", seed=3)
    calls = []

    def counting_loss(rgb, cameras, step_ratio, generator, shading="albedo"):
        calls.append(step_ratio)
        return mean_rgb_loss(rgb, cameras, step_ratio, generator)

    resumed = run_fine(field, counting_loss, TINY, tmp_path / "split", "cpu", seed=3)
    assert calls == [0.5, 0.75]
    assert torch.equal(resumed.faces, whole.faces)
    assert torch.allclose(resumed.vertices, whole.vertices, atol=1e-6)
    assert torch.allclose(resumed.color_fn(whole.vertices), whole.color_fn(whole.vertices), atol=1e-6)


def test_loss_gradients_move_the_surface(tmp_path):
    """Darkness is rewarded and the background is white: the mesh must grow to cover more pixels."""
    field = BallField(radius=0.4)
    cfg = dataclasses.replace(TINY, steps=25, shading=(1.0, 0.0, 0.0), sdf_lr=1e-2, checkpoint_every=100,
                              normal_consistency_weight=0.0, laplacian_weight=0.0)
    before = extract_mesh(field, cfg, "cpu")
    after = run_fine(field, mean_rgb_loss, cfg, tmp_path, "cpu", seed=0)
    closed(after.vertices, after.faces)
    grow = after.vertices.norm(dim=-1).mean() / before.vertices.norm(dim=-1).mean()
    assert grow > 1.05, float(grow)


# --- Issue 4, point 4: the fine loop shapes a mesh from images of an analytic ellipsoid --------------

AXES = np.array([0.72, 0.45, 0.55])


def ellipsoid_colour(points: np.ndarray) -> np.ndarray:
    unit = points / AXES
    return np.stack([0.45 + 0.3 * unit[..., 0], 0.35 + 0.25 * unit[..., 1], 0.5 - 0.3 * unit[..., 2]], axis=-1)


def render_ellipsoid(cameras: Cameras, supersample: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Ray-ellipsoid intersection in NumPy (no rasterizer): rgb "B H W 3" on white and coverage "B H W"."""
    fine = Cameras(cameras.c2w, cameras.fov_y, cameras.elevation, cameras.azimuth, cameras.distance,
                   cameras.height * supersample, cameras.width * supersample)
    origins, dirs = (t.double().numpy() for t in fine.rays())
    o, d = origins / AXES, dirs / AXES  # the ellipsoid becomes the unit sphere
    a, b, c = (d * d).sum(-1), 2 * (o * d).sum(-1), (o * o).sum(-1) - 1.0
    disc = b * b - 4 * a * c
    hit = disc > 0
    t = (-b - np.sqrt(np.where(hit, disc, 0.0))) / (2 * a)
    points = origins + t[..., None] * dirs
    rgb = np.where(hit[..., None], ellipsoid_colour(points), 1.0)
    shape = (len(cameras), cameras.height, supersample, cameras.width, supersample)
    return rgb.reshape(*shape, 3).mean((2, 4)), hit.reshape(shape).mean((2, 4))


def ellipsoid_surface(n: int) -> np.ndarray:
    sphere = trimesh.creation.icosphere(subdivisions=5)
    sphere.vertices *= AXES
    return trimesh.sample.sample_surface(sphere, n, seed=0)[0]


def chamfer(a: torch.Tensor, b: torch.Tensor) -> float:
    """Symmetric Chamfer distance: mean nearest-neighbour distance a->b plus b->a.

    Estimated from point samples, it has a floor of about half the sample spacing per direction
    even for identical surfaces: 20k points on this ellipsoid give ~0.35% of the diagonal each way.
    """
    ab = torch.cat([torch.cdist(x, b).min(1).values for x in a.split(1024)])
    ba = torch.cat([torch.cdist(x, a).min(1).values for x in b.split(1024)])
    return float(ab.mean() + ba.mean())


@pytest.mark.slow
def test_fine_loop_fits_an_ellipsoid_from_images(tmp_path):
    elevations, azimuths = np.meshgrid([-15.0, 15.0, 45.0], np.arange(8) * 45.0, indexing="ij")
    train = orbit_cameras(elevations.ravel(), azimuths.ravel(), 3.0, 40.0, 64)  # 24 views
    reference = torch.tensor(render_ellipsoid(train)[0], dtype=torch.float32)
    batch = 4

    def sampler(step: int, generator: torch.Generator) -> Cameras:
        pick = torch.randperm(len(train), generator=generator)[:batch]
        return Cameras(train.c2w[pick], train.fov_y[pick], train.elevation[pick], train.azimuth[pick],
                       train.distance[pick], 64, 64)

    def image_loss(rgb, cameras, step_ratio, generator, shading="albedo"):
        # Find each camera's reference by its pose; cameras come from the training set only.
        index = torch.cdist(cameras.positions, train.positions).argmin(1)
        loss = ((rgb - reference[index]) ** 2).mean()
        return loss, {"mse": float(loss.detach())}

    cfg = FineConfig(
        steps=int(os.environ.get("FINE_FIT_STEPS", 150)), tet_resolution=48, resolution=64,
        shading=(1.0, 0.0, 0.0), sdf_lr=1e-2, deform_lr=3e-2, lr=1e-2,
        normal_consistency_weight=1e-3, laplacian_weight=1e-1, checkpoint_every=1000,
        texture_init_steps=20, texture_init_points=2000,
        texture=TextureConfig(levels=8, log2_hashmap_size=14, min_res=4, max_res=128, hidden=32),
    )
    start = BallField(radius=0.55)
    result = run_fine(start, image_loss, cfg, tmp_path, "cpu", seed=0, camera_sampler=sampler)
    closed(result.vertices, result.faces)

    mine = sample_surface(result.vertices, result.faces, 20000, torch.Generator().manual_seed(0))
    target = torch.tensor(ellipsoid_surface(20000), dtype=torch.float32)
    diagonal = float(np.linalg.norm(2 * AXES))
    start_mesh = extract_mesh(start, cfg, "cpu")
    start_cd = chamfer(sample_surface(start_mesh.vertices, start_mesh.faces, 20000), target)
    cd = chamfer(mine, target)

    novel = orbit_cameras([0.0, 30.0, -5.0, 60.0] * 2, [22.5, 112.5, 200.0, 290.0, 67.5, 160.0, 250.0, 340.0],
                          3.2, 40.0, 64)
    _, coverage = render_ellipsoid(novel)
    with torch.no_grad():
        alpha = render_mesh(result.vertices, result.faces, novel, albedo_fn=result.color_fn).alpha[..., 0].numpy()
    a, b = alpha > 0.5, coverage > 0.5
    iou = (a & b).sum((1, 2)) / (a | b).sum((1, 2))
    print(f"chamfer {cd / diagonal:.4f} of diagonal (start {start_cd / diagonal:.4f}), IoU {iou.min():.3f}..{iou.mean():.3f}")
    assert cd < 0.02 * diagonal, (cd / diagonal, start_cd / diagonal)
    assert iou.min() >= 0.9, iou
