"""Volume rendering of a density + albedo field: ray bounds, samples, compositing, shading.

Rays are clipped to a bounding sphere and sampled in strata; with an occupancy grid the strata
cover only the stretches of each ray inside occupied cells, so empty space is never queried and
the samples land near surfaces at a finer spacing.
Pure PyTorch: it runs on CPUs; nothing here needs CUDA.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float
from torch import Tensor

from renderers.shading import Light, ShadingMode, shade

DensityFn = Callable[[Tensor], Tensor]  # points "N 3" -> density "N"
FieldFn = Callable[[Tensor], tuple[Tensor, Tensor]]  # points "N 3" -> (density "N", albedo "N 3" in [0, 1])


def ray_sphere(
    origins: Float[Tensor, "R 3"], dirs: Float[Tensor, "R 3"], radius: float
) -> tuple[Float[Tensor, " R"], Float[Tensor, " R"], Bool[Tensor, " R"]]:
    """Entry and exit distances of unit-direction rays through a sphere at the origin."""
    b = (origins * dirs).sum(-1)
    c = (origins * origins).sum(-1) - radius * radius
    disc = b * b - c
    hit = disc > 0
    root = disc.clamp(min=0).sqrt()
    near = (-b - root).clamp(min=0.0)
    far = (-b + root).clamp(min=0.0)
    return near, far, hit & (far > near)


def stratified_samples(
    near: Float[Tensor, " R"], far: Float[Tensor, " R"], n: int, generator: torch.Generator | None, perturb: bool
) -> Float[Tensor, "R S"]:
    """Sample distances, one per stratum of [near, far]; jittered in training, centred otherwise."""
    steps = torch.arange(n, device=near.device, dtype=near.dtype)
    # Drawn on the host, where the run's generator lives, so a run's samples are the same on any device.
    offset = torch.rand(near.shape[0], n, generator=generator, device="cpu").to(near) if perturb else torch.full_like(steps, 0.5)
    u = (steps + offset) / n
    return near[:, None] + (far - near)[:, None] * u


def composite(density: Float[Tensor, "R S"], delta: Float[Tensor, "R S"]) -> Float[Tensor, "R S"]:
    """Compositing weights ``T_i * (1 - exp(-sigma_i * delta_i))``; they sum to the ray's opacity."""
    alpha = 1.0 - torch.exp(-density * delta)
    trans = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1.0 - alpha + 1e-10], dim=-1), dim=-1)[:, :-1]
    return alpha * trans


class OccupancyGrid:
    """A coarse voxel grid of recent maximum density; cells below ``threshold`` are skipped."""

    def __init__(self, resolution: int = 32, bound: float = 1.0, threshold: float = 0.05, decay: float = 0.9) -> None:
        self.resolution, self.bound, self.threshold, self.decay = resolution, bound, threshold, decay
        # On the host, with the host generator's jitter; query() moves the occupied mask to the points' device.
        self.density = torch.full((resolution,) * 3, float("inf"), device="cpu")  # everything occupied until first update
        self._occupied: Tensor | None = None

    @torch.no_grad()
    def update(self, density_fn: DensityFn, generator: torch.Generator | None = None, device: str | torch.device = "cpu") -> float:
        """Re-measure every cell at a jittered point; returns the occupied fraction."""
        r = self.resolution
        idx = torch.stack(torch.meshgrid(*(torch.arange(r, device="cpu"),) * 3, indexing="ij"), dim=-1).view(-1, 3).float()
        jitter = torch.rand(idx.shape, generator=generator, device="cpu")
        points = ((idx + jitter) / r * 2.0 - 1.0) * self.bound
        fresh = torch.cat([density_fn(chunk.to(device)).float().cpu() for chunk in points.split(65536)])
        old = self.density.view(-1)
        old = torch.where(torch.isinf(old), torch.zeros_like(old), old)
        self.density = torch.maximum(old * self.decay, fresh).view(r, r, r)
        self._occupied = None
        return float(self.occupied().float().mean())

    def occupied(self) -> Bool[Tensor, "r r r"]:
        if self._occupied is None:
            # Dilated by a cell: one sample per cell can miss a surface that only clips its corner.
            occ = (self.density > self.threshold).float()[None, None]
            self._occupied = F.max_pool3d(occ, 3, stride=1, padding=1)[0, 0] > 0
        return self._occupied

    def query(self, points: Float[Tensor, "N 3"]) -> Bool[Tensor, " N"]:
        r = self.resolution
        # Few, fused ops and one flat gather: a render makes 100k+ look-ups a step, and three
        # index tensors with a chain of elementwise ops cost several times as much.
        half = torch.full_like(points[:1], 0.5 * r)
        cell = torch.addcmul(half, points, half / self.bound).floor_().clamp_(0, r - 1)
        # Whole numbers below 2**24 add exactly in float; elementwise, so autocast leaves it alone.
        flat = (cell * torch.tensor([r * r, r, 1], device=points.device, dtype=cell.dtype)).sum(-1).long()
        return self.occupied().to(points.device).view(-1).index_select(0, flat)

    def state(self) -> Tensor:
        return self.density.clone()

    def load(self, density: Tensor) -> None:
        self.density = density.clone().cpu()
        self._occupied = None


def occupied_samples(
    origins: Float[Tensor, "R 3"], dirs: Float[Tensor, "R 3"], near: Float[Tensor, " R"], far: Float[Tensor, " R"],
    occupancy: OccupancyGrid, n: int, generator: torch.Generator | None, perturb: bool, oversample: int = 4,
) -> tuple[Float[Tensor, "R S"], Float[Tensor, " R"], Bool[Tensor, " R"]]:
    """Stratified samples over only the occupied stretches of each ray.

    ``oversample * n`` cheap grid look-ups find where [near, far] crosses occupied cells; the
    ``n`` samples are then spread evenly over those stretches alone (inverse CDF of the occupancy
    mask), so the field is queried near surfaces at a finer spacing, never in empty space.
    Returns distances, the length each sample stands for, and whether a ray meets any occupied cell.
    """
    c = n * oversample
    span = far - near
    centres = near[:, None] + span[:, None] * (torch.arange(c, device=near.device, dtype=near.dtype) + 0.5) / c
    mask = occupancy.query((origins[:, None, :] + dirs[:, None, :] * centres[..., None]).view(-1, 3)).view(-1, c)
    counts = mask.sum(-1)
    any_occupied = counts > 0
    cdf = torch.cumsum(mask.to(near.dtype), dim=-1) / counts.clamp(min=1)[:, None]
    steps = torch.arange(n, device=near.device, dtype=near.dtype)
    offset = torch.rand(near.shape[0], n, generator=generator, device="cpu").to(near) if perturb else torch.full_like(steps, 0.5)
    u = ((steps + offset) / n).expand(near.shape[0], n)  # R S, in (0, 1)
    bins = torch.searchsorted(cdf, u.contiguous(), right=False).clamp(max=c - 1)
    below = torch.gather(cdf, 1, (bins - 1).clamp(min=0)) * (bins > 0)
    inside = (u - below) * counts.clamp(min=1)[:, None]  # position within the chosen (occupied) bin, in [0, 1]
    t = near[:, None] + span[:, None] * (bins + inside.clamp(0.0, 1.0)) / c
    length = span * counts / c / n
    return t, length, any_occupied


@dataclass
class VolumeRender:
    rgb: Float[Tensor, "R 3"]
    opacity: Float[Tensor, "R 1"]
    depth: Float[Tensor, "R 1"]  # expected distance of the weights, normalised by opacity
    normals: Float[Tensor, "R 3"] | None
    weights: Float[Tensor, "R S"]
    t: Float[Tensor, "R S"]
    # Per-sample normals and weights, for orientation regularisers (None without normals).
    sample_normals: Float[Tensor, "R S 3"] | None
    dirs: Float[Tensor, "R 3"]


def render_rays(
    field_fn: FieldFn,
    density_fn: DensityFn,
    origins: Float[Tensor, "R 3"],
    dirs: Float[Tensor, "R 3"],
    *,
    samples: int = 64,
    bound: float = 1.0,
    background: Float[Tensor, "R 3"] | float = 1.0,
    mode: ShadingMode = "albedo",
    light_position: Float[Tensor, "R 3"] | None = None,
    ambient: float = 0.3,
    occupancy: OccupancyGrid | None = None,
    generator: torch.Generator | None = None,
    perturb: bool = True,
    normal_eps: float = 1e-2,
    normal_min_weight: float = 1e-4,
) -> VolumeRender:
    """Composite ``samples`` points per ray inside the sphere of radius ``bound``.

    ``field_fn`` gives density and albedo in one query; ``density_fn`` alone serves the normals,
    which are only computed for samples whose compositing weight exceeds ``normal_min_weight``
    (the rest cannot change a pixel), so lit modes cost far less than four full field queries.
    """
    n_rays = origins.shape[0]
    near, far, hit = ray_sphere(origins, dirs, bound)
    if occupancy is None:
        t = stratified_samples(near, far, samples, generator, perturb)
        step_length = (far - near) / samples  # each sample stands for its stratum: they tile [near, far]
    else:
        t, step_length, any_occupied = occupied_samples(origins, dirs, near, far, occupancy, samples, generator, perturb)
        hit = hit & any_occupied
    points = origins[:, None, :] + dirs[:, None, :] * t[..., None]
    flat = points.view(-1, 3)
    keep = hit[:, None].expand(-1, samples).reshape(-1)
    idx = torch.nonzero(keep).squeeze(1)
    live = flat[idx]
    need_normals = mode != "albedo"

    density = torch.zeros(flat.shape[0], device=flat.device, dtype=flat.dtype)
    sigma, live_albedo = field_fn(live)
    # Under autocast the field answers in bf16/fp16; compositing stays in the rays' precision.
    sigma, live_albedo = sigma.to(flat.dtype), live_albedo.to(flat.dtype)
    density = density.index_put((idx,), sigma)
    delta = step_length[:, None].expand(-1, samples)
    weights = composite(density.view(n_rays, samples), delta)

    albedo = torch.zeros_like(flat)
    albedo = albedo.index_put((idx,), live_albedo)
    sample_normals = None
    if need_normals:
        # Normals from forward differences of the density: cheaper than double backprop on CPUs.
        visible = weights.detach().view(-1)[idx] > normal_min_weight
        nidx, npts, nsigma = idx[visible], live[visible], sigma[visible]
        offsets = torch.eye(3, device=flat.device, dtype=flat.dtype) * normal_eps
        shifted = density_fn((npts[:, None, :] + offsets[None]).view(-1, 3)).view(-1, 3)
        grad = (shifted - nsigma[:, None]) / normal_eps
        n_live = -F.normalize(grad, dim=-1)
        sample_normals = torch.zeros_like(flat).index_put((nidx,), n_live.to(flat.dtype)).view(n_rays, samples, 3)
    albedo = albedo.view(n_rays, samples, 3)
    opacity = weights.sum(-1, keepdim=True)

    if need_normals:
        light = Light(position=light_position if light_position is not None else origins, ambient=ambient,
                      strength=1.0 - ambient)
        colour = shade(albedo, sample_normals, points, mode, light)
        normals = F.normalize((weights[..., None] * sample_normals).sum(1), dim=-1)
    else:
        colour, normals = albedo, None
    rgb = (weights[..., None] * colour).sum(1)
    bg = torch.as_tensor(background, dtype=rgb.dtype, device=rgb.device)
    rgb = rgb + (1.0 - opacity) * bg
    depth = (weights * t).sum(-1, keepdim=True) / opacity.clamp(min=1e-6)
    return VolumeRender(rgb=rgb, opacity=opacity, depth=depth, normals=normals, weights=weights, t=t,
                        sample_normals=sample_normals, dirs=dirs)
