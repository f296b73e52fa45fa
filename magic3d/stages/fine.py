"""Stage 2: the coarse density becomes a DMTet mesh with a hash-grid texture, refined through a rasterizer.

Initialisation: the SDF comes from the coarse density at the tet grid vertices (a density level by
default, or the surface the orbit's renders show, ``magic3d.fields.sight``) and the texture is regressed onto the coarse
albedo at points of the new surface, so step 0 already looks like the coarse result. Each step
extracts the surface by marching tetrahedra, renders a batch of random orbit views (albedo,
diffuse or textureless), scores them with the stage loss and adds normal-consistency and
Laplacian regularisers that keep the surface smooth while the prior pushes on it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from magic3d.checkpoint import load_latest_checkpoint
from magic3d.config_sections import FineConfig
from magic3d.errors import RunError
from magic3d.fields.dmtet import DMTet, laplacian_smoothness, mesh_edges, normal_consistency
from magic3d.fields.sight import sight_directions
from magic3d.fields.texture import TextureField, sample_surface
from magic3d.progress import ProgressFn, silent
from magic3d.stages.coarse import CameraSampler
from magic3d.stages.loop import LoopSpec, LossFn, Precision, autocast_dtype, run_loop
from renderers.cameras import Cameras, sample_orbit_cameras, turntable_cameras
from renderers.mesh_render import MeshRender, render_mesh
from renderers.raster import get_rasterizer
from renderers.shading import SHADING_MODES, random_lights


@dataclass
class FineResult:
    vertices: Float[Tensor, "V 3"]
    faces: Int[Tensor, "F 3"]
    color_fn: Callable[[Tensor], Tensor]  # points "N 3" -> albedo "N 3" in [0, 1], no gradients
    metrics: dict[str, float]


class FineModel:
    """What the loop optimises in stage 2: SDF, deformation and texture, and how a step is scored."""

    def __init__(self, cfg: FineConfig, loss_fn: LossFn, device: torch.device,
                 camera_sampler: CameraSampler | None = None) -> None:
        self.cfg, self.loss_fn, self.device = cfg, loss_fn, device
        self.dmtet = DMTet(cfg.tet_resolution, cfg.bound).to(device)
        self.texture = TextureField(dataclasses.replace(cfg.texture, bound=cfg.bound), device).to(device)
        self.camera_sampler = camera_sampler
        self.rasterizer = get_rasterizer(device)
        self.threshold = float("nan")

    def initialise(self, coarse_field, generator: torch.Generator) -> dict[str, float]:
        self.threshold = _init_from_density(self.dmtet, coarse_field, self.cfg)
        with torch.no_grad():
            vertices, faces = self.mesh()
        metrics = {level_name(self.cfg): self.threshold}
        if self.cfg.texture_init_steps > 0:
            points = sample_surface(vertices, faces, self.cfg.texture_init_points, generator)
            metrics["texture_init_mse"] = self.texture.fit(
                coarse_field.albedo, points, steps=self.cfg.texture_init_steps, lr=self.cfg.lr, generator=generator)
        return metrics

    def mesh(self) -> tuple[Tensor, Tensor]:
        return self._nonempty(*self.dmtet.extract())

    def _nonempty(self, vertices: Tensor, faces: Tensor) -> tuple[Tensor, Tensor]:
        if faces.shape[0] == 0:
            raise empty_surface(self.cfg, self.threshold)
        return vertices, faces

    def param_groups(self) -> list[dict]:
        return [{"params": [self.dmtet.sdf], "lr": self.cfg.sdf_lr},
                {"params": [self.dmtet.deform], "lr": self.cfg.deform_lr},
                {"params": list(self.texture.encoding.parameters()), "lr": self.cfg.lr},
                {"params": list(self.texture.mlp.parameters()), "lr": self.cfg.lr * 0.1}]

    def state_tensors(self) -> dict[str, Tensor]:
        tensors = {"dmtet/sdf": self.dmtet.sdf, "dmtet/deform": self.dmtet.deform}
        tensors.update({f"texture/{k}": v for k, v in self.texture.state_dict().items()})
        tensors["dmtet/threshold"] = torch.tensor(self.threshold, device="cpu")  # a checkpoint value, never computed with
        return tensors

    def load_state_tensors(self, tensors: dict[str, Tensor]) -> None:
        with torch.no_grad():
            self.dmtet.sdf.copy_(tensors["dmtet/sdf"])
            self.dmtet.deform.copy_(tensors["dmtet/deform"])
            for k, v in self.texture.state_dict().items():
                v.copy_(tensors[f"texture/{k}"])
        self.threshold = float(tensors["dmtet/threshold"])

    def cameras(self, step: int, generator: torch.Generator) -> Cameras:
        if self.camera_sampler is not None:
            return self.camera_sampler(step, generator).to(self.device)
        return sample_orbit_cameras(self.cfg.batch_size, self.cfg.orbit.range(), self.cfg.resolution,
                                    generator=generator, device=self.device)

    def shading_mode(self, generator: torch.Generator) -> str:
        probs = torch.tensor(self.cfg.shading, dtype=torch.float64, device="cpu")  # for the CPU generator
        return SHADING_MODES[int(torch.multinomial(probs / probs.sum(), 1, generator=generator))]

    def render(self, vertices: Tensor, faces: Tensor, cams: Cameras, mode: str,
               generator: torch.Generator | None) -> MeshRender:
        light = random_lights(cams.positions, generator) if mode != "albedo" else None
        if light is not None:
            light = dataclasses.replace(light, ambient=self.cfg.ambient, strength=1.0 - self.cfg.ambient)
        background = torch.tensor(self.cfg.background, device=self.device)
        return render_mesh(vertices, faces, cams, albedo_fn=self.texture, mode=mode, light=light,
                           background=background, rasterizer=self.rasterizer,
                           smooth_normals=self.cfg.smooth_normals)

    def step(self, step: int, ratio: float, generator: torch.Generator) -> tuple[Tensor, dict[str, Tensor | float]]:
        cams = self.cameras(step, generator)
        mode = self.shading_mode(generator)
        vertices, faces = self.mesh()
        out = self.render(vertices, faces, cams, mode, generator)
        loss, metrics = self.loss_fn(out.rgb, cams, ratio, generator, shading=mode)
        # Both regularisers walk the same edges: found once a step (a sort of every edge).
        edges = mesh_edges(faces) if self.cfg.normal_consistency_weight > 0 or self.cfg.laplacian_weight > 0 else None
        if self.cfg.normal_consistency_weight > 0:
            nc = normal_consistency(vertices, faces, edges)
            loss = loss + self.cfg.normal_consistency_weight * nc
            metrics = {**metrics, "normal_consistency": nc.detach()}
        if self.cfg.laplacian_weight > 0:
            lap = laplacian_smoothness(vertices, faces, edges)
            loss = loss + self.cfg.laplacian_weight * lap
            metrics = {**metrics, "laplacian": lap.detach()}
        return loss, {**metrics, "faces": float(faces.shape[0])}

    def after_step(self, step: int, generator: torch.Generator) -> None:
        return None

    @torch.no_grad()
    def preview(self) -> np.ndarray:
        cams = turntable_cameras(self.cfg.preview_views, self.cfg.resolution, device=self.device)
        vertices, faces = self.mesh()
        rows = []
        for mode in ("albedo", "textureless"):
            out = self.render(vertices, faces, cams, mode, torch.Generator().manual_seed(0))
            rows.append(torch.cat(list(out.rgb), dim=1))
        return (torch.cat(rows, dim=0).clamp(0, 1) * 255).round().byte().cpu().numpy()

    def final_mesh(self) -> tuple[Tensor, Tensor, dict[str, int]]:
        """The mesh the result carries, tunnels up to ``seal_tunnels`` sealed and handles up to
        ``cut_handles`` cut, and how many of each."""
        vertices, faces, repairs = self.dmtet.extract_repaired(self.cfg.seal_tunnels, self.cfg.cut_handles)
        return (*self._nonempty(vertices, faces), repairs)

    def result(self, metrics: dict[str, float]) -> FineResult:
        vertices, faces, repairs = self.final_mesh()
        texture = self.texture.eval()

        def color_fn(points: Tensor) -> Tensor:
            with torch.no_grad():
                return torch.cat([texture(points[i : i + 65536].to(self.device))
                                  for i in range(0, points.shape[0], 65536)]) if points.shape[0] else \
                    points.new_zeros(0, 3)

        full = {**metrics, level_name(self.cfg): self.threshold, **{k: float(v) for k, v in repairs.items()},
                "vertices": float(vertices.shape[0]), "faces": float(faces.shape[0]),
                "bound_reach": bound_reach(vertices, self.cfg.bound)}
        return FineResult(vertices.detach(), faces.detach(), color_fn, full)


def run_fine(
    coarse_field, loss_fn: LossFn, cfg: FineConfig, run_dir: Path, device: torch.device | str, seed: int,
    progress: ProgressFn = silent, resume: bool = True, camera_sampler: CameraSampler | None = None,
    precision: Precision = "fp32", made_by: str = "",
) -> FineResult:
    """Refine the coarse result into a textured mesh; resumes from run_dir/checkpoints/fine-*.

    ``coarse_field`` needs ``density(points "N 3") -> "N"`` and ``albedo(points "N 3") -> "N 3"``.
    """
    device = torch.device(device)
    run_dir = Path(run_dir)
    torch.manual_seed(seed)  # the texture hash table's initial values
    model = FineModel(cfg, loss_fn, device, camera_sampler)
    generator = torch.Generator().manual_seed(seed)
    metrics: dict[str, float] = {}
    # A valid checkpoint replaces everything initialise() would compute: skip the texture regression.
    # The loop's own test of a checkpoint (run_loop), so a rejected one never skips initialise().
    usable = resume and load_latest_checkpoint(run_dir / "checkpoints", "fine", "cpu", model.state_tensors(),
                                               cfg.steps) is not None
    if not usable:
        metrics = model.initialise(coarse_field, generator)
    if cfg.steps <= 0:
        return model.result(metrics)
    spec = LoopSpec("fine", cfg.steps, cfg.checkpoint_every, cfg.preview_every or cfg.steps,
                    device_type=device.type, autocast=autocast_dtype(precision, device), made_by=made_by)
    result = run_loop(model, spec, run_dir, generator, progress, resume)
    return model.result({**metrics, **result.metrics})


def extract_mesh(coarse_field, cfg: FineConfig, device: torch.device | str) -> FineResult:
    """The coarse density as a mesh (marching tetrahedra at the surface ``cfg.surface`` finds),
    coloured by the coarse albedo: what a run with ``fine.steps=0`` exports."""
    device = torch.device(device)
    dmtet = DMTet(cfg.tet_resolution, cfg.bound).to(device)
    threshold = _init_from_density(dmtet, coarse_field, cfg)
    vertices, faces, repairs = dmtet.extract_repaired(cfg.seal_tunnels, cfg.cut_handles)
    if faces.shape[0] == 0:
        raise empty_surface(cfg, threshold)

    def color_fn(points: Tensor) -> Tensor:
        with torch.no_grad():
            return coarse_field.albedo(points.to(device)).clamp(0.0, 1.0)

    metrics = {level_name(cfg): threshold, **{k: float(v) for k, v in repairs.items()}, "vertices": float(vertices.shape[0]),
               "faces": float(faces.shape[0]), "bound_reach": bound_reach(vertices, cfg.bound)}
    return FineResult(vertices.detach(), faces.detach(), color_fn, metrics)


def bound_reach(vertices: Float[Tensor, "V 3"], bound: float) -> float:
    """How far the mesh reaches towards the field's box, as a fraction of ``bound``: near 1 the
    surface is the box's (a field solid up to its edge, clipped there), not an object inside it."""
    return float(vertices.detach().abs().amax() / bound) if vertices.shape[0] else 0.0


def level_name(cfg: FineConfig) -> str:
    """The metric naming the level the surface was cut at: an optical depth or a density."""
    return "sight_depth" if cfg.surface == "sight" else "density_threshold"


def empty_surface(cfg: FineConfig, level: float) -> RunError:
    if cfg.surface == "sight":
        return RunError("The coarse field is seen through from every camera of the orbit, so it has no surface; "
                        "train the coarse stage longer, or cut it at a density with --set fine.surface=density.")
    return RunError(f"The coarse density gives an empty surface at threshold {level:.4g}; set "
                    "--set fine.density_threshold=... lower, or train the coarse stage longer.")


def _init_from_density(dmtet: DMTet, coarse_field, cfg: FineConfig) -> float:
    try:
        sight = sight_directions(cfg.orbit.elevation, device=dmtet.grid_vertices.device) if cfg.surface == "sight" else None
        return dmtet.init_from_density(coarse_field.density, cfg.density_threshold, sight=sight,
                                       keep_largest=cfg.keep_largest_component, fill_hidden=cfg.fill_hidden)
    except ValueError as exc:
        raise RunError(f"The coarse stage produced no usable density ({exc}); train it longer or check its prompt.") from None
