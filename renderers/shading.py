"""Shading modes shared by the volume renderer and the mesh rasterizer.

DreamFusion and Magic3D render each training view in one of three ways: plain albedo,
albedo lit by a random point light plus ambient, or the same lighting on a white surface
("textureless"), which forces geometry to explain the image instead of paint.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from jaxtyping import Float
from torch import Tensor

ShadingMode = Literal["albedo", "diffuse", "textureless"]
SHADING_MODES: tuple[ShadingMode, ...] = ("albedo", "diffuse", "textureless")


@dataclass(frozen=True)
class Light:
    """A point light per image. ``position`` is in world space."""

    position: Float[Tensor, "B 3"]
    ambient: float = 0.3
    strength: float = 0.7


def random_lights(
    camera_positions: Float[Tensor, "B 3"],
    generator: torch.Generator | None = None,
    distance: tuple[float, float] = (0.8, 1.5),
    spread_deg: float = 45.0,
) -> Light:
    """Lights near each camera, jittered by up to ``spread_deg`` so the lit side stays visible."""
    b = camera_positions.shape[0]
    device = camera_positions.device
    toward_cam = torch.nn.functional.normalize(camera_positions, dim=-1)
    jitter = torch.randn(b, 3, generator=generator).to(device)
    jitter = jitter - (jitter * toward_cam).sum(-1, keepdim=True) * toward_cam
    jitter = torch.nn.functional.normalize(jitter, dim=-1)
    angle = torch.rand(b, 1, generator=generator).to(device) * torch.deg2rad(torch.tensor(spread_deg))
    direction = toward_cam * torch.cos(angle) + jitter * torch.sin(angle)
    lo, hi = distance
    radius = camera_positions.norm(dim=-1, keepdim=True)
    scale = lo + (hi - lo) * torch.rand(b, 1, generator=generator).to(device)
    return Light(position=direction * radius * scale)


def shade(
    albedo: Float[Tensor, "B *P 3"],
    normals: Float[Tensor, "B *P 3"] | None,
    points: Float[Tensor, "B *P 3"] | None,
    mode: ShadingMode,
    light: Light | None,
) -> Float[Tensor, "B *P 3"]:
    """Colour of surface samples; normals are unit length, world space, facing outwards."""
    if mode not in SHADING_MODES:
        raise ValueError(f"unknown shading mode {mode!r}; expected one of {SHADING_MODES}")
    if mode == "albedo":
        return albedo
    if normals is None or points is None or light is None:
        raise ValueError(f"shading mode {mode!r} needs normals, points and a light")
    extra = albedo.dim() - 2
    light_pos = light.position.view(light.position.shape[0], *([1] * extra), 3)
    to_light = torch.nn.functional.normalize(light_pos - points, dim=-1)
    lambert = (normals * to_light).sum(-1, keepdim=True).clamp(min=0.0)
    intensity = light.ambient + light.strength * lambert
    base = torch.ones_like(albedo) if mode == "textureless" else albedo
    return (base * intensity).clamp(0.0, 1.0)
