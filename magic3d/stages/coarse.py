"""Stage 1: a coarse hash-grid NeRF optimised from random orbit views by a stage loss (SDS in practice).

Each step renders a batch of random cameras in a random shading mode (albedo, diffuse with a
random point light, textureless), scores the images with ``loss_fn`` and adds Magic3D's
regularisers: opacity sparsity and orientation (normals must not face away from the camera).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from magic3d.checkpoint import load_latest_checkpoint
from magic3d.config_sections import CoarseConfig
from magic3d.errors import RunError
from magic3d.fields.nerf import NeRFField
from magic3d.progress import ProgressFn, silent
from magic3d.stages.loop import LoopSpec, LossFn, Precision, autocast_dtype, run_loop
from magic3d.stages.losses import scheduled_weight
from renderers.cameras import Cameras, sample_orbit_cameras, turntable_cameras
from renderers.shading import SHADING_MODES, random_lights
from renderers.volume import OccupancyGrid, render_rays

CameraSampler = Callable[[int, torch.Generator], Cameras]
# An extra term of every step's loss from the field alone (``--init-shape``'s sketch-shape loss).
Regulariser = Callable[[NeRFField, torch.Generator], tuple[Tensor, dict[str, Tensor]]]


@dataclass
class CoarseResult:
    field: NeRFField
    metrics: dict[str, float]


class CoarseModel:
    """What the loop optimises in stage 1: the field, its occupancy grid and how a step is scored."""

    def __init__(self, cfg: CoarseConfig, loss_fn: LossFn, device: torch.device,
                 camera_sampler: CameraSampler | None = None, regulariser: Regulariser | None = None) -> None:
        self.cfg, self.loss_fn, self.device, self.regulariser = cfg, loss_fn, device, regulariser
        self.field = NeRFField(cfg.field, device).to(device)
        self.occupancy = OccupancyGrid(cfg.occupancy_resolution, cfg.field.bound, cfg.occupancy_threshold)
        self.camera_sampler = camera_sampler

    def param_groups(self) -> list[dict]:
        return [{"params": list(self.field.encoding.parameters()), "lr": self.cfg.lr},
                {"params": list(self.field.mlp.parameters()) + list(self.field.background_mlp.parameters()),
                 "lr": self.cfg.lr * self.cfg.mlp_lr_scale}]

    def state_tensors(self) -> dict[str, Tensor]:
        tensors = {f"field/{k}": v for k, v in self.field.state_dict().items()}
        tensors["occupancy/density"] = self.occupancy.state()
        return tensors

    def load_state_tensors(self, tensors: dict[str, Tensor]) -> None:
        own = {f"field/{k}": v for k, v in self.field.state_dict().items()}
        own["occupancy/density"] = self.occupancy.density
        bad = [k for k, v in own.items() if k not in tensors or tensors[k].shape != v.shape]
        if bad:
            raise RunError(
                f"The coarse checkpoint does not fit the current coarse config (first mismatch: {bad[0]!r}); "
                "use the config the run started with, or start over with --restart."
            )
        with torch.no_grad():
            for k, v in self.field.state_dict().items():
                v.copy_(tensors[f"field/{k}"])
        self.occupancy.load(tensors["occupancy/density"])

    def cameras(self, step: int, generator: torch.Generator) -> Cameras:
        if self.camera_sampler is not None:
            return self.camera_sampler(step, generator).to(self.device)
        return sample_orbit_cameras(self.cfg.batch_size, self.cfg.orbit.range(), self.cfg.resolution,
                                    generator=generator, device=self.device)

    def shading_mode(self, step: int, generator: torch.Generator) -> str:
        if step < self.cfg.albedo_warmup:
            return "albedo"
        probs = torch.tensor(self.cfg.shading, dtype=torch.float64, device="cpu")  # for the CPU generator
        return SHADING_MODES[int(torch.multinomial(probs / probs.sum(), 1, generator=generator))]

    def render(self, cams: Cameras, mode: str, generator: torch.Generator | None, perturb: bool = True):
        origins, dirs = cams.rays()
        b, h, w = len(cams), cams.height, cams.width
        o, d = origins.reshape(-1, 3), dirs.reshape(-1, 3)
        light = None
        if mode != "albedo":
            positions = random_lights(cams.positions, generator).position
            light = positions.view(b, 1, 3).expand(b, h * w, 3).reshape(-1, 3)
        out = render_rays(
            self.field.density_and_albedo, self.field.density, o, d, samples=self.cfg.samples_per_ray,
            bound=self.cfg.field.bound, background=self.field.background(d), mode=mode, light_position=light,
            ambient=self.cfg.ambient, occupancy=self.occupancy, generator=generator, perturb=perturb,
        )
        return out, out.rgb.view(b, h, w, 3)

    def step(self, step: int, ratio: float, generator: torch.Generator) -> tuple[Tensor, dict[str, Tensor | float]]:
        cams = self.cameras(step, generator)
        mode = self.shading_mode(step, generator)
        out, rgb = self.render(cams, mode, generator)
        loss, metrics = self.loss_fn(rgb, cams, ratio, generator, shading=mode)
        sparsity = torch.sqrt(out.opacity**2 + 0.01).mean()
        loss = loss + self.cfg.opacity_weight * sparsity
        orientation_weight = scheduled_weight(self.cfg.orientation_schedule, step, self.cfg.orientation_weight)
        if out.sample_normals is not None and orientation_weight > 0:
            facing = (out.sample_normals * out.dirs[:, None, :]).sum(-1).clamp(min=0.0)
            orientation = (out.weights.detach() * facing**2).sum(-1).mean()
            loss = loss + orientation_weight * orientation
        if self.regulariser is not None:
            extra, extra_metrics = self.regulariser(self.field, generator)
            loss, metrics = loss + extra, {**metrics, **extra_metrics}
        return loss, {**metrics, "opacity": out.opacity.detach().mean()}

    def after_step(self, step: int, generator: torch.Generator) -> None:
        if self.cfg.occupancy_every and (step + 1) % self.cfg.occupancy_every == 0:
            self.occupancy.update(self.field.density, generator, self.device)

    @torch.no_grad()
    def preview(self) -> np.ndarray:
        cams = turntable_cameras(self.cfg.preview_views, self.cfg.resolution, device=self.device)
        rows = []
        for mode in ("albedo", "textureless"):
            _, rgb = self.render(cams, mode, torch.Generator().manual_seed(0), perturb=False)
            rows.append(torch.cat(list(rgb), dim=1))
        return (torch.cat(rows, dim=0).clamp(0, 1) * 255).round().byte().cpu().numpy()


def run_coarse(
    loss_fn: LossFn, cfg: CoarseConfig, run_dir: Path, device: torch.device | str, seed: int,
    progress: ProgressFn = silent, resume: bool = True, camera_sampler: CameraSampler | None = None,
    precision: Precision = "fp32", made_by: str = "",
    init: Callable[[CoarseModel, torch.Generator], dict[str, float]] | None = None,
    regulariser: Regulariser | None = None,
) -> CoarseResult:
    """``init(model, generator)``, when given, sets the field up before the first step (the user's
    shape, an edited run's field) unless a usable checkpoint will replace it anyway; ``regulariser``
    adds its term to every step's loss."""
    device = torch.device(device)
    with torch.random.fork_rng(devices=[]):  # the hash table's initial values, without touching the caller's RNG
        torch.manual_seed(seed)
        model = CoarseModel(cfg, loss_fn, device, camera_sampler, regulariser)
    init_metrics: dict[str, float] = {}
    if init is not None and not (resume and load_latest_checkpoint(
            Path(run_dir) / "checkpoints", "coarse", "cpu", model.state_tensors(), cfg.steps) is not None):
        init_metrics = init(model, torch.Generator().manual_seed(seed))  # its own stream: the loop's is untouched
    generator = torch.Generator().manual_seed(seed)
    spec = LoopSpec("coarse", cfg.steps, cfg.checkpoint_every, cfg.preview_every or cfg.steps,
                    device_type=device.type, autocast=autocast_dtype(precision, device), made_by=made_by)
    result = run_loop(model, spec, Path(run_dir), generator, progress, resume)
    return CoarseResult(field=model.field.eval(), metrics={**init_metrics, **result.metrics})


def load_coarse_field(run_dir: Path, cfg: CoarseConfig, device: torch.device | str) -> NeRFField:
    ck = load_latest_checkpoint(Path(run_dir) / "checkpoints", "coarse", device)
    if ck is None:
        raise RunError(f"No coarse checkpoint in {str(run_dir)!r}; run the coarse stage first.")
    model = CoarseModel(cfg, lambda *a, **k: (torch.zeros(()), {}), torch.device(device))
    model.load_state_tensors(ck.tensors)
    return model.field.eval()
