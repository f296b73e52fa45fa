"""Orbit cameras around the origin: poses, rays, projection and view buckets.

Conventions used everywhere in magic3d:
- World space is right-handed and Y-up; objects sit in the cube [-1, 1]^3 and face +Z.
- ``c2w`` is camera-to-world in the OpenGL convention: the camera looks along its -Z, +Y is up.
- Azimuth 0 puts the camera on +Z (the front view); positive azimuth turns it towards +X.
  Elevation is the angle above the XZ plane. Angles are in degrees in configs, radians in math.
- Pixel (i, j) has its centre at (j + 0.5, i + 0.5); row 0 is the top of the image, both for
  ``rays()`` and for the rasterizer fed with ``mvp()`` (which flips clip-space Y for that reason).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

VIEW_BUCKETS = ("front", "side", "back", "overhead")


@dataclass(frozen=True)
class OrbitRange:
    """Ranges from which training cameras are drawn (degrees, world units)."""

    elevation: tuple[float, float] = (-10.0, 45.0)
    azimuth: tuple[float, float] = (-180.0, 180.0)
    distance: tuple[float, float] = (3.0, 3.5)
    fov_y: tuple[float, float] = (40.0, 70.0)


@dataclass
class Cameras:
    """A batch of pinhole cameras sharing one image size."""

    c2w: Float[Tensor, "B 4 4"]
    fov_y: Float[Tensor, " B"]  # radians
    elevation: Float[Tensor, " B"]  # degrees
    azimuth: Float[Tensor, " B"]  # degrees, wrapped to [-180, 180)
    distance: Float[Tensor, " B"]
    height: int
    width: int
    # (elevation, azimuth) in degrees kept on the host: choosing each view's prompt reads them
    # every step, and reading them off a GPU would wait for it. None: read from the tensors above.
    host_angles: Float[Tensor, "B 2"] | None = None

    def __len__(self) -> int:
        return self.c2w.shape[0]

    @property
    def device(self) -> torch.device:
        return self.c2w.device

    @property
    def positions(self) -> Float[Tensor, "B 3"]:
        return self.c2w[:, :3, 3]

    def focal(self) -> Float[Tensor, " B"]:
        """Focal length in pixels (square pixels)."""
        return 0.5 * self.height / torch.tan(0.5 * self.fov_y)

    def rays(self) -> tuple[Float[Tensor, "B H W 3"], Float[Tensor, "B H W 3"]]:
        """World-space ray origins and unit directions through every pixel centre."""
        dev, dt = self.c2w.device, self.c2w.dtype
        i = torch.arange(self.height, device=dev, dtype=dt) + 0.5
        j = torch.arange(self.width, device=dev, dtype=dt) + 0.5
        ii, jj = torch.meshgrid(i, j, indexing="ij")
        f = self.focal()[:, None, None]
        dirs_cam = torch.stack(
            [
                (jj - 0.5 * self.width) / f,
                -(ii - 0.5 * self.height) / f,
                -torch.ones_like(ii).expand_as(f * ii),
            ],
            dim=-1,
        )  # B H W 3
        dirs = torch.einsum("bij,bhwj->bhwi", self.c2w[:, :3, :3], dirs_cam)
        dirs = dirs / dirs.norm(dim=-1, keepdim=True)
        origins = self.positions[:, None, None, :].expand_as(dirs)
        return origins, dirs

    def projection(self, near: float = 0.1, far: float = 100.0) -> Float[Tensor, "B 4 4"]:
        """OpenGL perspective projection with clip-space Y flipped so raster row 0 is the top."""
        n = len(self)
        t = torch.tan(0.5 * self.fov_y)
        aspect = self.width / self.height
        proj = torch.zeros(n, 4, 4, device=self.c2w.device, dtype=self.c2w.dtype)
        proj[:, 0, 0] = 1.0 / (t * aspect)
        proj[:, 1, 1] = -1.0 / t
        proj[:, 2, 2] = -(far + near) / (far - near)
        proj[:, 2, 3] = -2.0 * far * near / (far - near)
        proj[:, 3, 2] = -1.0
        return proj

    def w2c(self) -> Float[Tensor, "B 4 4"]:
        return torch.linalg.inv(self.c2w)

    def mvp(self, near: float = 0.1, far: float = 100.0) -> Float[Tensor, "B 4 4"]:
        """World to clip space, for the rasterizer: ``clip = mvp @ [x, y, z, 1]``."""
        return self.projection(near, far) @ self.w2c()

    def angles(self) -> Float[Tensor, "B 2"]:
        """(elevation, azimuth) in degrees, on the host."""
        if self.host_angles is not None:
            return self.host_angles
        return torch.stack([self.elevation, self.azimuth], -1).float().cpu()

    def view_buckets(self) -> list[str]:
        return [view_bucket(e, a) for e, a in self.angles().tolist()]

    def to(self, device: torch.device | str) -> Cameras:
        return Cameras(
            self.c2w.to(device), self.fov_y.to(device), self.elevation.to(device),
            self.azimuth.to(device), self.distance.to(device), self.height, self.width, self.angles(),
        )


def view_bucket(elevation: float, azimuth: float, overhead_above: float = 60.0) -> str:
    """DreamFusion's view buckets: overhead above 60 degrees, else front/side/back by azimuth."""
    if elevation > overhead_above:
        return "overhead"
    a = abs(wrap_degrees(azimuth))
    if a < 45.0:
        return "front"
    if a > 135.0:
        return "back"
    return "side"


def wrap_degrees(angle: float | Tensor) -> float | Tensor:
    """Wrap to [-180, 180)."""
    return (angle + 180.0) % 360.0 - 180.0


def look_at(
    eye: Float[Tensor, "B 3"], target: Float[Tensor, "B 3"] | None = None, up: tuple = (0.0, 1.0, 0.0)
) -> Float[Tensor, "B 4 4"]:
    """Camera-to-world matrices (OpenGL convention) looking from ``eye`` at ``target``."""
    if target is None:
        target = torch.zeros_like(eye)
    forward = target - eye
    forward = forward / forward.norm(dim=-1, keepdim=True)
    up_t = torch.tensor(up, dtype=eye.dtype, device=eye.device).expand_as(eye)
    right = torch.cross(forward, up_t, dim=-1)
    # Looking straight up or down: any right vector orthogonal to forward will do.
    degenerate = right.norm(dim=-1) < 1e-6
    if degenerate.any():
        alt = torch.tensor((0.0, 0.0, -1.0), dtype=eye.dtype, device=eye.device).expand_as(eye)
        right = torch.where(degenerate[:, None], torch.cross(forward, alt, dim=-1), right)
    right = right / right.norm(dim=-1, keepdim=True)
    true_up = torch.cross(right, forward, dim=-1)
    c2w = torch.eye(4, dtype=eye.dtype, device=eye.device).repeat(eye.shape[0], 1, 1)
    c2w[:, :3, 0] = right
    c2w[:, :3, 1] = true_up
    c2w[:, :3, 2] = -forward
    c2w[:, :3, 3] = eye
    return c2w


def orbit_cameras(
    elevation: Float[Tensor, " B"] | list[float],
    azimuth: Float[Tensor, " B"] | list[float],
    distance: Float[Tensor, " B"] | list[float] | float,
    fov_y: Float[Tensor, " B"] | list[float] | float,
    height: int,
    width: int | None = None,
    device: torch.device | str = "cpu",
) -> Cameras:
    """Cameras on a sphere around the origin, looking at it. Angles in degrees.

    Poses are made on the host and then moved (a few bytes a camera), so the host keeps the
    angles that pick each view's prompt without waiting for the device.
    """
    def host(values: Tensor | list[float] | float) -> Tensor:
        return torch.as_tensor(values, dtype=torch.float32).detach().cpu().reshape(-1)

    el, az = host(elevation), host(azimuth)
    n = el.shape[0]
    dist, fov = host(distance).expand(n), host(fov_y).expand(n)
    el_r, az_r = torch.deg2rad(el), torch.deg2rad(az)
    eye = torch.stack(
        [dist * torch.cos(el_r) * torch.sin(az_r), dist * torch.sin(el_r), dist * torch.cos(el_r) * torch.cos(az_r)],
        dim=-1,
    )
    cams = Cameras(
        c2w=look_at(eye),
        fov_y=torch.deg2rad(fov).clone(),
        elevation=el.clone(),
        azimuth=wrap_degrees(az).clone(),
        distance=dist.clone(),
        height=height,
        width=width or height,
    )
    return cams.to(device)


def sample_orbit_cameras(
    n: int,
    ranges: OrbitRange,
    height: int,
    width: int | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> Cameras:
    """Random training cameras: uniform in azimuth, elevation, distance and field of view."""

    def uniform(lo_hi: tuple[float, float]) -> Tensor:
        lo, hi = lo_hi
        return lo + (hi - lo) * torch.rand(n, generator=generator, device="cpu")  # the CPU generator's draws

    return orbit_cameras(
        uniform(ranges.elevation), uniform(ranges.azimuth), uniform(ranges.distance),
        uniform(ranges.fov_y), height, width, device,
    )


def turntable_cameras(
    n: int, height: int, elevation: float = 15.0, distance: float = 3.2, fov_y: float = 45.0,
    device: torch.device | str = "cpu",
) -> Cameras:
    """Evenly spaced views around the object, starting at the front."""
    az = [360.0 * k / n for k in range(n)]
    return orbit_cameras([elevation] * n, az, distance, fov_y, height, device=device)


def fov_for_extent(radius: float, distance: float) -> float:
    """Vertical field of view (degrees) that just frames a sphere of ``radius`` at ``distance``."""
    return math.degrees(2.0 * math.asin(min(1.0, radius / distance)))
