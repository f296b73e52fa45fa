"""Volume rendering of a density + albedo field: ray bounds, samples, compositing, shading.

Rays are clipped to a bounding sphere, sampled in strata, and samples in cells an occupancy
grid marks empty are skipped without querying the field, so most queries land near the surface.
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
    offset = torch.rand(near.shape[0], n, generator=generator).to(near) if perturb else torch.full_like(steps, 0.5)
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
        self.density = torch.full((resolution,) * 3, float("inf"))  # everything occupied until first update

    @torch.no_grad()
    def update(self, density_fn: DensityFn, generator: torch.Generator | None = None, device: str | torch.device = "cpu") -> float:
        """Re-measure every cell at a jittered point; returns the occupied fraction."""
        r = self.resolution
        idx = torch.stack(torch.meshgrid(*(torch.arange(r),) * 3, indexing="ij"), dim=-1).view(-1, 3).float()
        jitter = torch.rand(idx.shape, generator=generator)
        points = ((idx + jitter) / r * 2.0 - 1.0) * self.bound
        fresh = torch.cat([density_fn(chunk.to(device)).float().cpu() for chunk in points.split(65536)])
        old = self.density.view(-1)
        old = torch.where(torch.isinf(old), torch.zeros_like(old), old)
        self.density = torch.maximum(old * self.decay, fresh).view(r, r, r)
        return float(self.occupied().float().mean())

    def occupied(self) -> Bool[Tensor, "r r r"]:
        # Dilated by a cell: one sample per cell can miss a surface that only clips its corner.
        occ = (self.density > self.threshold).float()[None, None]
        return F.max_pool3d(occ, 3, stride=1, padding=1)[0, 0] > 0

    def query(self, points: Float[Tensor, "N 3"]) -> Bool[Tensor, " N"]:
        r = self.resolution
        cell = ((points / self.bound + 1.0) * 0.5 * r).long().clamp(0, r - 1)
        occ = self.occupied().to(points.device)
        return occ[cell[:, 0], cell[:, 1], cell[:, 2]]

    def state(self) -> Tensor:
        return self.density.clone()

    def load(self, density: Tensor) -> None:
        self.density = density.clone().cpu()


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
) -> VolumeRender:
    """Composite ``samples`` points per ray inside the sphere of radius ``bound``.

    ``field_fn`` gives density and albedo in one query; ``density_fn`` alone serves the normals.
    """
    n_rays = origins.shape[0]
    near, far, hit = ray_sphere(origins, dirs, bound)
    t = stratified_samples(near, far, samples, generator, perturb)
    points = origins[:, None, :] + dirs[:, None, :] * t[..., None]
    flat = points.view(-1, 3)
    keep = hit[:, None].expand(-1, samples).reshape(-1)
    if occupancy is not None:
        keep = keep & occupancy.query(flat)
    idx = torch.nonzero(keep).squeeze(1)
    live = flat[idx]
    need_normals = mode != "albedo"

    density = torch.zeros(flat.shape[0], device=flat.device, dtype=flat.dtype)
    sigma, live_albedo = field_fn(live)
    density = density.index_put((idx,), sigma)
    # Each sample stands for its stratum, so the intervals tile [near, far] exactly.
    delta = ((far - near) / samples)[:, None].expand(-1, samples)
    weights = composite(density.view(n_rays, samples), delta)

    albedo = torch.zeros_like(flat)
    albedo = albedo.index_put((idx,), live_albedo)
    sample_normals = None
    if need_normals:
        # Normals from forward differences of the density: cheaper than double backprop on CPUs.
        offsets = torch.eye(3, device=flat.device, dtype=flat.dtype) * normal_eps
        shifted = density_fn((live[:, None, :] + offsets[None]).view(-1, 3)).view(-1, 3)
        grad = (shifted - sigma[:, None]) / normal_eps
        n_live = -F.normalize(grad, dim=-1)
        sample_normals = torch.zeros_like(flat).index_put((idx,), n_live).view(n_rays, samples, 3)
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
