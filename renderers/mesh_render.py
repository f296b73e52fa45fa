"""Render a triangle mesh through the rasterizer: colour, alpha, depth, normals and surface points.

One function serves the fine stage (albedo from a texture field, shading modes), the built-in
prior's training images (vertex colours), baking checks and previews (UV textures).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from renderers.cameras import Cameras
from renderers.raster import Rasterizer, get_rasterizer
from renderers.shading import Light, ShadingMode, shade

Wrap = Literal["repeat", "clamp", "mirror", "black"]
WRAPS: tuple[Wrap, ...] = ("repeat", "clamp", "mirror", "black")


@dataclass(frozen=True)
class Texture:
    """A base-colour image (row 0 at the top, uv v = 0 at the bottom) and how UVs past 0..1 read it,
    along u (``wrap_s``) and v (``wrap_t``): as USD's UsdUVTexture and glTF samplers say."""

    image: Float[Tensor, "Ht Wt 3"]
    wrap_s: Wrap = "repeat"
    wrap_t: Wrap = "repeat"


def sample_texture(raster: Rasterizer, tex: Texture, uv: Float[Tensor, "N 2"], filter: str = "linear") -> Float[Tensor, "N 3"]:
    """``tex`` at ``uv`` with its wrap modes. A repeating axis is padded with the texel from the
    opposite edge, so bilinear filtering across the seam blends the two edges as a GPU sampler does."""
    for wrap in (tex.wrap_s, tex.wrap_t):
        if wrap not in WRAPS:
            raise ValueError(f"unknown texture wrap {wrap!r}; use one of {', '.join(WRAPS)}")
    image = tex.image
    coords, outside = [], torch.zeros(uv.shape[0], dtype=torch.bool, device=uv.device)
    for axis, wrap in ((0, tex.wrap_s), (1, tex.wrap_t)):
        c = uv[:, axis]
        size = image.shape[1 - axis]
        if wrap == "repeat":
            c = c - torch.floor(c)
            image = torch.cat([image.narrow(1 - axis, size - 1, 1), image, image.narrow(1 - axis, 0, 1)], dim=1 - axis)
            c = (c * size + 1.0) / (size + 2.0)
        elif wrap == "mirror":
            c = 1.0 - (torch.remainder(c, 2.0) - 1.0).abs()
        else:
            if wrap == "black":
                outside |= (c < 0.0) | (c > 1.0)
            c = c.clamp(0.0, 1.0)
        coords.append(c)
    grid = torch.stack(coords, dim=-1).view(1, -1, 1, 2)
    out = raster.texture(image.unsqueeze(0), grid, filter).view(-1, image.shape[-1])
    return torch.where(outside.unsqueeze(-1), torch.zeros_like(out), out)


@dataclass
class MeshRender:
    rgb: Float[Tensor, "B H W 3"]
    alpha: Float[Tensor, "B H W 1"]
    depth: Float[Tensor, "B H W 1"]  # distance along the view axis, 0 where empty
    normals: Float[Tensor, "B H W 3"]  # world space, unit, 0 where empty
    points: Float[Tensor, "B H W 3"]  # world-space surface points, 0 where empty
    rast: Float[Tensor, "B H W 4"]


def face_normals(vertices: Float[Tensor, "B V 3"], faces: Int[Tensor, "F 3"]) -> Float[Tensor, "B F 3"]:
    v = vertices[:, faces.long()]
    return F.normalize(torch.cross(v[:, :, 1] - v[:, :, 0], v[:, :, 2] - v[:, :, 0], dim=-1), dim=-1)


def vertex_normals(vertices: Float[Tensor, "B V 3"], faces: Int[Tensor, "F 3"]) -> Float[Tensor, "B V 3"]:
    """Area-weighted vertex normals (smooth shading of the refined mesh)."""
    v = vertices[:, faces.long()]
    n = torch.cross(v[:, :, 1] - v[:, :, 0], v[:, :, 2] - v[:, :, 0], dim=-1)
    out = torch.zeros_like(vertices)
    for k in range(3):
        out = out.index_add(1, faces[:, k].long(), n)
    return F.normalize(out, dim=-1)


def render_mesh(
    vertices: Float[Tensor, "V 3"] | Float[Tensor, "B V 3"],
    faces: Int[Tensor, "F 3"],
    cameras: Cameras,
    *,
    albedo_fn: Callable[[Tensor], Tensor] | None = None,
    vertex_colors: Tensor | None = None,
    uv: Float[Tensor, "T 2"] | None = None,
    uv_faces: Int[Tensor, "F 3"] | None = None,
    texture: Float[Tensor, "Ht Wt 3"] | None = None,
    textures: Sequence[Texture] | None = None,
    face_texture: Int[Tensor, " F"] | None = None,
    mode: ShadingMode = "albedo",
    light: Light | None = None,
    background: Tensor | float = 1.0,
    rasterizer: Rasterizer | None = None,
    antialias: bool = True,
    smooth_normals: bool = False,
    closed: bool = False,
) -> MeshRender:
    """Colour comes from exactly one of ``albedo_fn(points "N 3")``, ``vertex_colors``, ``uv``+``texture``
    (sampled clamped), or ``uv``+``textures``+``face_texture``: many materials in one draw, each face
    reading ``textures[face_texture[f]]`` with its wrap modes (-1: none) times ``vertex_colors``
    (white when not given). ``closed``: the caller's word that the mesh is a closed surface wound
    counter-clockwise seen from outside, so the rasterizer may skip faces turned away (``cull_back``)."""
    if textures is not None:
        if uv is None or face_texture is None:
            raise ValueError("textures need uv coordinates and face_texture")
        if albedo_fn is not None or texture is not None:
            raise ValueError("give textures with vertex_colors only, not with albedo_fn or texture")
    elif sum(x is not None for x in (albedo_fn, vertex_colors, texture)) != 1:
        raise ValueError("give exactly one of albedo_fn, vertex_colors or texture (with uv)")
    raster = rasterizer or get_rasterizer(vertices.device)
    batch, height, width = len(cameras), cameras.height, cameras.width
    verts = vertices if vertices.dim() == 3 else vertices.unsqueeze(0).expand(batch, -1, -1)
    homo = torch.cat([verts, torch.ones_like(verts[..., :1])], dim=-1)
    clip = homo @ cameras.mvp().to(verts).transpose(1, 2)
    rast = raster.rasterize(clip, faces, (height, width), cull_back=closed)
    hit = rast[..., 3:4] > 0
    points = raster.interpolate(verts, rast, faces)

    if smooth_normals:
        normals = F.normalize(raster.interpolate(vertex_normals(verts, faces), rast, faces), dim=-1)
    else:
        tri = (rast[..., 3].long() - 1).clamp(min=0)
        fn = face_normals(verts, faces)
        normals = torch.gather(fn, 1, tri.view(batch, -1, 1).expand(-1, -1, 3)).view(batch, height, width, 3)
    # Faces are seen from both sides; light the side facing the camera.
    to_cam = cameras.positions.to(verts).view(batch, 1, 1, 3) - points
    flip = torch.where((normals * to_cam).sum(-1, keepdim=True) < 0, -1.0, 1.0)
    normals = normals * flip * hit

    if albedo_fn is not None:
        albedo = torch.zeros(batch, height, width, 3, dtype=verts.dtype, device=verts.device)
        mask = hit[..., 0]
        albedo = albedo.index_put((mask,), albedo_fn(points[mask]).to(verts.dtype))
    elif textures is not None:
        albedo = (raster.interpolate(vertex_colors.to(verts.dtype), rast, faces) if vertex_colors is not None
                  else torch.ones(batch, height, width, 3, dtype=verts.dtype, device=verts.device))
        uv_rast = raster.interpolate(uv.to(verts.dtype), rast, uv_faces if uv_faces is not None else faces)
        tri = rast[..., 3].round().long() - 1
        which = torch.where(tri >= 0, face_texture.to(tri.device).long()[tri.clamp(min=0)], -1)
        for k, tex in enumerate(textures):
            mask = which == k
            if bool(mask.any()):
                sampled = sample_texture(raster, Texture(tex.image.to(verts), tex.wrap_s, tex.wrap_t), uv_rast[mask])
                albedo = albedo.index_put((mask,), albedo[mask] * sampled)
    elif vertex_colors is not None:
        albedo = raster.interpolate(vertex_colors.to(verts.dtype), rast, faces)
    else:
        if uv is None:
            raise ValueError("a texture needs uv coordinates")
        uv_rast = raster.interpolate(uv.to(verts.dtype), rast, uv_faces if uv_faces is not None else faces)
        albedo = raster.texture(texture.to(verts.dtype).unsqueeze(0), uv_rast)
    rgb = shade(albedo, normals, points, mode, light) if mode != "albedo" else albedo

    bg = torch.as_tensor(background, dtype=verts.dtype, device=verts.device)
    if bg.dim() == 1:
        bg = bg.view(1, 1, 1, 3)
    alpha = hit.to(verts.dtype)
    rgb = torch.where(hit, rgb, bg.expand_as(rgb) if bg.dim() == 4 else bg)
    if antialias:
        both = raster.antialias(torch.cat([rgb, alpha], dim=-1), rast, clip, faces)
        rgb, alpha = both[..., :3], both[..., 3:]
    depth = (points - cameras.positions.to(verts).view(batch, 1, 1, 3)).norm(dim=-1, keepdim=True) * hit
    return MeshRender(rgb=rgb, alpha=alpha, depth=depth, normals=normals, points=points, rast=rast)
