"""``generate --init-shape FILE``: the coarse field starts from the user's mesh instead of Magic3D's blob.

Before the first SDS step the field's density is regressed onto a target that is a smooth
function of the mesh's signed distance, ``softplus(D * tanh(-sdf / w))`` (``D`` the blob's
peak, ``w`` = ``control.init_width``): full inside, empty outside, a band of width ``w`` between.

Why a short fit of the field rather than a prior density term added to it: the term would have
to be carried (and decayed) inside the field's forward pass for the whole stage, and the fine
stage, the edit command and every checkpoint would have to know about it; a fitted field is an
ordinary field, so resume, ``coarse.steps=0`` (straight to the fine stage) and later edits need
nothing new, and SDS is free to move every part of the shape from its first step. The fit uses
the stage's own param groups and learning rates, so what it writes is what SDS then refines.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from magic3d.config import Config
from magic3d.fields.texture import sample_surface
from magic3d.control.user_mesh import read_user_mesh, scene_frame

SDF_RESOLUTION = 96  # voxels per side of the signed-distance grid over [-bound, bound]^3

Initialiser = Callable[..., dict[str, float]]  # (CoarseModel, generator) -> metrics


def shape_initialiser(cfg: Config) -> Initialiser | None:
    """What ``run_coarse`` calls before its first step when the run has ``control.init_shape``."""
    if not cfg.control.init_shape:
        return None

    def initialise(model, generator: torch.Generator) -> dict[str, float]:
        bound = cfg.coarse.field.bound
        mesh = read_user_mesh(cfg.control.init_shape, "init shape")
        frame = scene_frame(np.asarray(mesh.vertices), cfg.control.extent * bound)
        vertices = frame.to_scene(mesh.vertices)
        grid = signed_distance_grid(vertices, np.asarray(mesh.faces), bound, SDF_RESOLUTION)
        return fit_density(model, grid, vertices, np.asarray(mesh.faces), cfg, generator)

    return initialise


def signed_distance_grid(
    vertices: np.ndarray, faces: np.ndarray, bound: float, resolution: int
) -> Float[np.ndarray, "R R R"]:
    """Signed distance (negative inside) at the voxel centres of [-bound, bound]^3, indexed (x, y, z).

    Inside-ness is the closed mesh's ray test at every centre; distances are the exact Euclidean
    distance transform of that voxelisation (half a voxel off at most), cheap at any face count.
    """
    import trimesh
    from scipy.ndimage import distance_transform_edt

    centres = (np.arange(resolution) + 0.5) / resolution * 2.0 * bound - bound
    points = np.stack(np.meshgrid(centres, centres, centres, indexing="ij"), axis=-1).reshape(-1, 3)
    inside = trimesh.Trimesh(vertices, faces, process=True).contains(points).reshape((resolution,) * 3)
    voxel = 2.0 * bound / resolution
    outside_distance = distance_transform_edt(~inside) * voxel  # to the nearest inside centre
    inside_distance = distance_transform_edt(inside) * voxel
    return np.where(inside, -(inside_distance - 0.5 * voxel), outside_distance - 0.5 * voxel)


def sample_grid(grid: Float[Tensor, "R R R"], points: Float[Tensor, "N 3"], bound: float) -> Float[Tensor, " N"]:
    """Trilinear values of a voxel-centred (x, y, z) grid over [-bound, bound]^3 at ``points``."""
    # grid_sample reads (x, y, z) as (W, H, D): the volume goes in as (z, y, x).
    volume = grid.permute(2, 1, 0)[None, None]
    where = (points / bound).view(1, -1, 1, 1, 3)
    return F.grid_sample(volume, where, mode="bilinear", padding_mode="border", align_corners=False).view(-1)


def fit_density(
    model, grid: np.ndarray, vertices: np.ndarray, faces: np.ndarray, cfg: Config, generator: torch.Generator
) -> dict[str, float]:
    """Regress ``model.field``'s density onto the mesh's target density (and its albedo onto grey)."""
    control, field_cfg = cfg.control, cfg.coarse.field
    device = model.device
    bound = field_cfg.bound
    sdf = torch.as_tensor(grid, dtype=torch.float32, device=device)
    surface_v = torch.as_tensor(vertices, dtype=torch.float32, device=device)
    surface_f = torch.as_tensor(faces, dtype=torch.int64, device=device)
    peak = float(field_cfg.blob_density)
    opt = torch.optim.Adam(model.param_groups(), betas=(0.9, 0.99), eps=1e-15)
    half = control.init_points // 2
    loss = torch.zeros((), device=device)
    for _ in range(control.init_fit_steps):
        # Half the points anywhere, half within a few band widths of the surface, where the shape is decided.
        anywhere = (torch.rand(half, 3, generator=generator, device="cpu").to(device) * 2.0 - 1.0) * bound
        near = sample_surface(surface_v, surface_f, control.init_points - half, generator)
        near = near + torch.randn(near.shape, generator=generator, device="cpu").to(device) * 2.0 * control.init_width
        points = torch.cat([anywhere, near.clamp(-bound, bound)])
        target = F.softplus(peak * torch.tanh(-sample_grid(sdf, points, bound) / control.init_width))
        density, albedo = model.field.density_and_albedo(points)
        # Relative error: the empty outside (density ~0) weighs as much as the full inside (~peak).
        loss = ((density - target) ** 2 / (target + 1.0)).mean() + 0.1 * ((albedo - 0.5) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        probe = (torch.rand(65536, 3, generator=generator, device="cpu").to(device) * 2.0 - 1.0) * bound
        inside = sample_grid(sdf, probe, bound) < 0
        solid = model.field.density(probe) > F.softplus(torch.zeros((), device=device))
        union = (inside | solid).sum().clamp(min=1)
        iou = (inside & solid).sum() / union
    return {"init_fit_loss": float(loss.detach()), "init_iou": float(iou)}


def coarse_start(cfg: Config, device: torch.device) -> Initialiser | None:
    """How the run's coarse field starts: the user's shape, the edited run's field, or (None) the blob."""
    if cfg.control.edit_from:
        from pathlib import Path

        from magic3d.checkpoint import load_latest_checkpoint
        from magic3d.errors import InputError

        def from_run(model, generator: torch.Generator) -> dict[str, float]:
            ck = load_latest_checkpoint(Path(cfg.control.edit_from) / "checkpoints", "coarse", "cpu",
                                        model.state_tensors())
            if ck is None:
                raise InputError(f"{cfg.control.edit_from!r} has no usable coarse checkpoint to edit from.")
            model.load_state_tensors({k: v.to(device) for k, v in ck.tensors.items()})
            return {"edit_source_step": float(ck.step)}

        return from_run
    return shape_initialiser(cfg)
