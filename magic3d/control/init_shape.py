"""``generate --init-shape FILE``: the coarse field starts from the user's mesh instead of Magic3D's blob.

Before the first SDS step the field's density is regressed onto a target that is a smooth
function of the mesh's signed distance, ``softplus(D * tanh(-sdf / w))`` (``D`` the blob's
peak, ``w`` = ``control.init_width``): full inside, empty outside, a band of width ``w`` between.

Why a fit of the field rather than a prior density term added to it: the term would have to be
carried (and decayed) inside the field's forward pass for the whole stage, and the fine stage,
the edit command and every checkpoint would have to know about it; a fitted field is an
ordinary field, so resume, ``coarse.steps=0`` (straight to the fine stage) and later edits need
nothing new. The fit uses the stage's own param groups and learning rates.

A fit alone is forgotten: 100 SDS steps from a fitted cone, then the fine stage, made a pyramid
(IoU 0.70 with the input, scripts/eval_control.py). So every coarse step also adds
``control.shape_weight`` times ``sketch_shape_loss``: the field's occupancy is kept at the mesh's
away from its surface and left to SDS next to it (coarse IoU 0.78 -> 0.88 after 100 steps), and
the fine stage keeps the tet grid's inside/outside from that field (``fine_config``) while its
deformation and texture refine the surface.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from magic3d.config import Config
from magic3d.config_sections import FineConfig
from magic3d.control.user_mesh import read_user_mesh, scene_frame
from magic3d.fields.texture import sample_surface

SDF_RESOLUTION = 96  # voxels per side of the signed-distance grid over [-bound, bound]^3

Initialiser = Callable[..., dict[str, float]]  # (CoarseModel, generator) -> metrics
Regulariser = Callable[..., tuple[Tensor, dict[str, Tensor]]]  # (NeRFField, generator) -> (loss, metrics)
LogOccupancy = tuple[Tensor, Tensor]  # (log p, log(1 - p)) "N" each: p the chance a point is inside


@dataclass
class ShapeTarget:
    """The user's mesh placed in the scene: its signed distance on a grid and its surface, on ``device``."""

    sdf: Float[Tensor, "R R R"]
    vertices: Float[Tensor, "V 3"]
    faces: Tensor  # "F 3" int64
    bound: float

    def signed_distance(self, points: Float[Tensor, "N 3"]) -> Float[Tensor, " N"]:
        return sample_grid(self.sdf, points, self.bound)

    def points(self, count: int, spread: float, generator: torch.Generator) -> Float[Tensor, "N 3"]:
        """Half the points anywhere in the bound, half within about ``spread`` of the surface."""
        device, half = self.sdf.device, count // 2
        anywhere = (torch.rand(half, 3, generator=generator, device="cpu").to(device) * 2.0 - 1.0) * self.bound
        near = sample_surface(self.vertices, self.faces, count - half, generator)
        near = near + torch.randn(near.shape, generator=generator, device="cpu").to(device) * spread
        return torch.cat([anywhere, near.clamp(-self.bound, self.bound)])


def shape_target(cfg: Config, device: torch.device) -> ShapeTarget:
    """Read, place (``scene_frame``) and voxelise ``control.init_shape``."""
    bound = cfg.coarse.field.bound
    mesh = read_user_mesh(cfg.control.init_shape, "init shape")
    vertices = scene_frame(np.asarray(mesh.vertices), cfg.control.extent * bound).to_scene(mesh.vertices)
    grid = signed_distance_grid(vertices, np.asarray(mesh.faces), bound, SDF_RESOLUTION)
    return ShapeTarget(sdf=torch.as_tensor(grid, dtype=torch.float32, device=device),
                       vertices=torch.as_tensor(vertices, dtype=torch.float32, device=device),
                       faces=torch.as_tensor(np.asarray(mesh.faces), dtype=torch.int64, device=device), bound=bound)


def shape_initialiser(cfg: Config, target: Callable[[], ShapeTarget]) -> Initialiser:
    """What ``run_coarse`` calls before its first step when the run has ``control.init_shape``."""

    def initialise(model, generator: torch.Generator) -> dict[str, float]:
        return fit_density(model, target(), cfg, generator)

    return initialise


def density_occupancy(density: Float[Tensor, " N"], delta: float) -> LogOccupancy:
    """A NeRF's occupancy at a point: its opacity over one render step, ``p = 1 - exp(-density * delta)``."""
    x = density.float() * delta
    # expm1 keeps log(1 - exp(-x)) exact for small x; the floor keeps it finite where x is 0.
    return torch.log(-torch.expm1(-x.clamp(min=1e-6))), -x


def sketch_shape_loss(occupancy: LogOccupancy, sdf: Float[Tensor, " N"], band: float) -> Float[Tensor, ""]:
    """How far a field's occupancy at points is from the user's shape's, ignoring a band about its surface.

    The shape's occupancy is 1 inside (``sdf < 0``) and 0 outside; the term is the cross-entropy of
    the field's against it (``-log p`` inside, ``-log(1 - p)`` outside), scaled at each point by
    ``1 - exp(-sdf^2 / (2 band^2))``: next to the surface the shape has no say and SDS is free to
    move, carve and sharpen it; a band away it holds the shape (the sketch-shape loss of Latent-NeRF,
    Metzer et al. 2023). For a NeRF (``density_occupancy``) it is ``density * delta`` outside, a
    steady push down, and a push up inside that fades as the point turns opaque: 0 exactly where
    the field is empty outside and opaque inside.
    """
    log_full, log_empty = occupancy
    sdf = sdf.float()
    nll = -torch.where(sdf < 0, log_full, log_empty)
    weight = 1.0 - torch.exp(-0.5 * (sdf / band) ** 2)
    return (weight * nll).mean()


def shape_loss(cfg: Config, target: Callable[[], ShapeTarget]) -> Regulariser | None:
    """The coarse stage's extra loss term for ``--init-shape`` (``control.shape_weight`` times
    ``sketch_shape_loss`` at fresh points each step), or None where it is off."""
    control = cfg.control
    if control.shape_weight <= 0:
        return None
    delta = 2.0 * cfg.coarse.field.bound / cfg.coarse.samples_per_ray  # one render sample across the scene

    def regularise(field, generator: torch.Generator) -> tuple[Tensor, dict[str, Tensor]]:
        shape = target()
        points = shape.points(control.shape_points, 2.0 * control.shape_band, generator)
        loss = sketch_shape_loss(density_occupancy(field.density(points), delta), shape.signed_distance(points),
                                 control.shape_band)
        return control.shape_weight * loss, {"shape": loss.detach()}

    return regularise


def fine_config(cfg: Config) -> FineConfig:
    """The fine stage of an ``--init-shape`` run: its SDF's learning rate times ``control.init_fine_sdf_lr_scale``.

    The fine stage decides the shape only through the SDF at its tet grid's vertices; its
    deformation moves each vertex within half a cell. On the built-in prior 300 fine steps moved
    the cone's surface most of a cell outward (IoU with the input 0.88 after the coarse stage, 0.74
    after the fine one) whatever weight a sketch-shape loss on that SDF had (1 to 1000, at the
    vertices or at points between them); with the SDF held and the deformation free it came out
    at 0.92: the deformation and texture refine the user's shape, the cells stay the user's.
    """
    return dataclasses.replace(cfg.fine, sdf_lr=cfg.fine.sdf_lr * cfg.control.init_fine_sdf_lr_scale)


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


def fit_density(model, target: ShapeTarget, cfg: Config, generator: torch.Generator) -> dict[str, float]:
    """Regress ``model.field``'s density onto the mesh's target density (and its albedo onto grey)."""
    control, field_cfg = cfg.control, cfg.coarse.field
    device = model.device
    bound = field_cfg.bound
    peak = float(field_cfg.blob_density)
    opt = torch.optim.Adam(model.param_groups(), betas=(0.9, 0.99), eps=1e-15)
    loss = torch.zeros((), device=device)
    for _ in range(control.init_fit_steps):
        # Half the points anywhere, half within a few band widths of the surface, where the shape is decided.
        points = target.points(control.init_points, 2.0 * control.init_width, generator)
        goal = F.softplus(peak * torch.tanh(-target.signed_distance(points) / control.init_width))
        density, albedo = model.field.density_and_albedo(points)
        # Relative error: the empty outside (density ~0) weighs as much as the full inside (~peak).
        loss = ((density - goal) ** 2 / (goal + 1.0)).mean() + 0.1 * ((albedo - 0.5) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        probe = (torch.rand(65536, 3, generator=generator, device="cpu").to(device) * 2.0 - 1.0) * bound
        inside = target.signed_distance(probe) < 0
        solid = model.field.density(probe) > F.softplus(torch.zeros((), device=device))
        union = (inside | solid).sum().clamp(min=1)
        iou = (inside & solid).sum() / union
    return {"init_fit_loss": float(loss.detach()), "init_iou": float(iou)}


@dataclass
class Start:
    """How the run's coarse field starts (``init``; None: the blob), what the coarse stage adds to its
    loss, and the fine stage's config where it differs from the run's."""

    init: Initialiser | None = None
    coarse_loss: Regulariser | None = None
    fine: FineConfig | None = None  # the fine stage's config where it differs from the run's


def stage_start(cfg: Config, device: torch.device) -> Start:
    """The user's shape (fitted, then held by the sketch-shape loss), the edited run's field, or the blob."""
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

        return Start(init=from_run)
    if not cfg.control.init_shape:
        return Start()
    cached: list[ShapeTarget] = []

    def target() -> ShapeTarget:  # voxelised once, when first needed (a resumed run skips the fit)
        if not cached:
            cached.append(shape_target(cfg, device))
        return cached[0]

    return Start(init=shape_initialiser(cfg, target), coarse_loss=shape_loss(cfg, target), fine=fine_config(cfg))
