"""``magic3d texture FILE "prompt"``: the user's geometry kept exactly, only a texture optimised on it.

The mesh is placed in the scene (``magic3d.control.user_mesh.scene_frame``) and a texture field, the fine
stage's, is trained by SDS on renders of that fixed mesh: albedo views for the first quarter of
the steps, then albedo and diffuse ones (textureless renders carry no gradient to a texture).
The field is baked into the mesh's own UVs when they are a usable atlas (one per vertex, finite,
inside the unit square, triangles of non-zero area), else into a new xatlas atlas, whose seams
only copy vertices: every vertex keeps its position and every triangle its corners.

The file's points are written, not the scene's: the asset is placed as every magic3d asset is
(footprint centred on the origin, lowest point at height 0, USD turned Z-up on request) and
scaled to ``export.size_m``, which ``magic3d texture`` sets to the mesh's own largest side unless
``--size`` is given, so by default the points differ from the file's by one translation.

``magic3d edit --keep geometry`` runs the same stage on the source run's baked mesh, in its own
scene frame, with the texture starting from the source's fine texture.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import trimesh
from torch import Tensor

from magic3d.config import Config
from magic3d.control.user_mesh import SceneFrame, read_user_mesh, scene_frame
from magic3d.progress import ProgressFn
from magic3d.stages.fine import FineModel
from renderers.shading import SHADING_MODES


class FixedMeshModel(FineModel):
    """The fine stage with the surface fixed: only the texture field is optimised."""

    def __init__(self, cfg, loss_fn, device: torch.device, vertices: np.ndarray, faces: np.ndarray) -> None:
        # The smallest tet grid (FineModel builds one; it is never used) and no surface regularisers.
        fixed = dataclasses.replace(cfg, tet_resolution=2, normal_consistency_weight=0.0, laplacian_weight=0.0)
        super().__init__(fixed, loss_fn, device)
        self.vertices = torch.as_tensor(vertices, dtype=torch.float32, device=device)
        self.faces = torch.as_tensor(faces, dtype=torch.int64, device=device)
        self.step_index = 0

    def mesh(self) -> tuple[Tensor, Tensor]:
        return self.vertices, self.faces

    def final_mesh(self) -> tuple[Tensor, Tensor, dict[str, int]]:
        return self.vertices, self.faces, {}  # the user's mesh exactly: nothing sealed or cut

    def param_groups(self) -> list[dict]:
        return [{"params": list(self.texture.encoding.parameters()), "lr": self.cfg.lr},
                {"params": list(self.texture.mlp.parameters()), "lr": self.cfg.lr * 0.1}]

    def state_tensors(self) -> dict[str, Tensor]:
        return {f"texture/{k}": v for k, v in self.texture.state_dict().items()}

    def load_state_tensors(self, tensors: dict[str, Tensor]) -> None:
        with torch.no_grad():
            for k, v in self.texture.state_dict().items():
                v.copy_(tensors[f"texture/{k}"])

    def step(self, step: int, ratio: float, generator: torch.Generator):
        self.step_index = step
        return super().step(step, ratio, generator)

    def shading_mode(self, generator: torch.Generator) -> str:
        albedo, diffuse = self.cfg.shading[0], self.cfg.shading[1]
        if self.step_index < self.cfg.steps // 4 or albedo + diffuse <= 0:
            return "albedo"
        probs = torch.tensor([albedo, diffuse], dtype=torch.float64, device="cpu")  # for the CPU generator
        return SHADING_MODES[int(torch.multinomial(probs / probs.sum(), 1, generator=generator))]


def own_uv(mesh: trimesh.Trimesh) -> np.ndarray | None:
    """The mesh's UVs when they can hold a baked texture as they are (see the module docstring)."""
    uv = getattr(mesh.visual, "uv", None)
    if uv is None or len(uv) != len(mesh.vertices):
        return None
    uv = np.asarray(uv, dtype=np.float64)
    if not np.isfinite(uv).all() or uv.min() < 0.0 or uv.max() > 1.0:
        return None
    corners = uv[np.asarray(mesh.faces)]
    edge1, edge2 = corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]
    area = np.abs(edge1[:, 0] * edge2[:, 1] - edge1[:, 1] * edge2[:, 0])
    return uv if (area > 1e-12).all() else None


def source_mesh(cfg: Config) -> tuple[trimesh.Trimesh, SceneFrame, Path | None]:
    """(the mesh kept, its scene frame, the run whose fine texture the field starts from or None)."""
    if cfg.control.edit_from:
        from magic3d.export import BAKED_MESH

        run = Path(cfg.control.edit_from)
        # The baked mesh is in the source run's scene units already, where its texture field lives.
        return read_user_mesh(run / BAKED_MESH, "source run's mesh"), SceneFrame(np.zeros(3), 1.0), run
    mesh = read_user_mesh(cfg.control.texture_mesh, "mesh to texture")
    return mesh, scene_frame(np.asarray(mesh.vertices), cfg.control.extent * cfg.fine.bound), None


def start_texture(model: FixedMeshModel, run: Path, device: torch.device) -> None:
    from magic3d.checkpoint import load_latest_checkpoint

    ck = load_latest_checkpoint(run / "checkpoints", "fine", "cpu")
    if ck is not None and all(f"texture/{k}" in ck.tensors for k in model.texture.state_dict()):
        model.load_state_tensors({k: v for k, v in ck.tensors.items() if k.startswith("texture/")})


def texture_stages(
    text: str, cfg: Config, run_dir: Path, device: torch.device, prior: Any, resume: bool, progress: ProgressFn,
    made_by: str = "",
) -> tuple[dict[str, Path], dict[str, Any], dict[str, float]]:
    """The user's mesh -> a texture trained on it -> baked into its UVs -> files (``run_stages``' contract)."""
    from magic3d.checkpoint import load_latest_checkpoint
    from magic3d.export import write_outputs
    from magic3d.guidance import load_prior
    from magic3d.prompts import ViewPrompts
    from magic3d.stages.loop import LoopSpec, autocast_dtype, run_loop
    from magic3d.stages.losses import SDSLoss

    timings: dict[str, float] = {}
    metrics: dict[str, Any] = {}
    clock = time.perf_counter()
    fine_id = cfg.prior.fine_id or cfg.prior.id
    if fine_id != cfg.prior.id:  # the texture is the fine stage's work: its prior
        del prior
        prior = load_prior(fine_id, cfg.prior, device, offload=cfg.runtime.offload)
    prompts = ViewPrompts.build(text, prior, cfg.prior, run_dir / "cache")
    timings["load_prior"] = time.perf_counter() - clock

    clock = time.perf_counter()
    mesh, frame, source_run = source_mesh(cfg)
    faces = np.asarray(mesh.faces, dtype=np.int64)
    scene = frame.to_scene(mesh.vertices)
    torch.manual_seed(cfg.runtime.seed)  # the texture hash table's initial values
    model = FixedMeshModel(cfg.fine, SDSLoss(prior, prompts, cfg.fine.sds), device, scene, faces)
    if source_run is not None and not (resume and load_latest_checkpoint(
            run_dir / "checkpoints", "texture", "cpu", model.state_tensors(), cfg.fine.steps) is not None):
        start_texture(model, source_run, device)
    spec = LoopSpec("texture", cfg.fine.steps, cfg.fine.checkpoint_every, cfg.fine.preview_every or cfg.fine.steps,
                    device_type=device.type, autocast=autocast_dtype(cfg.runtime.precision, device), made_by=made_by)
    result = run_loop(model, spec, run_dir, torch.Generator().manual_seed(cfg.runtime.seed), progress, resume)
    metrics["texture"] = result.metrics
    timings["fine"] = time.perf_counter() - clock

    clock = time.perf_counter()
    asset = bake_onto(mesh, scene, model.result({}).color_fn, cfg, device)
    metrics["uv"] = asset.metadata["uv"]
    metrics["faces"] = int(len(faces))
    metrics["surface"] = asset.metadata["surface"]
    timings["bake"] = time.perf_counter() - clock

    clock = time.perf_counter()
    files = write_outputs(asset, run_dir, text, cfg)
    timings["export"] = time.perf_counter() - clock
    return files, metrics, timings


def bake_onto(mesh: trimesh.Trimesh, scene: np.ndarray, color_fn, cfg: Config, device: torch.device) -> trimesh.Trimesh:
    """The file's mesh, points and triangles as they are, with ``color_fn`` (of scene points) baked
    into its own UVs or a new atlas."""
    from PIL import Image

    from exporters.common import weld
    from magic3d.bake import bake_texture, uv_atlas
    from magic3d.surface import surface_report

    vertices = np.asarray(mesh.vertices, dtype=np.float64)
    faces = np.asarray(mesh.faces, dtype=np.int64)
    normals = np.asarray(mesh.vertex_normals)
    uv = own_uv(mesh)
    kind = "own"
    vmap = np.arange(len(vertices))
    if uv is None:
        kind = "xatlas"
        vmap, faces, uv = uv_atlas(vertices, faces, cfg.bake.texture_size, cfg.bake.padding_px,
                                   cfg.bake.atlas_piece_faces)
    pixels = bake_texture(scene[vmap], faces, uv, color_fn, cfg.bake, device)
    material = trimesh.visual.material.PBRMaterial(
        name="material", baseColorTexture=Image.fromarray(pixels),
        baseColorFactor=np.array([255, 255, 255, 255], dtype=np.uint8),
        roughnessFactor=float(cfg.bake.roughness), metallicFactor=float(cfg.bake.metallic))
    out = trimesh.Trimesh(vertices[vmap], faces, vertex_normals=normals[vmap], process=False)
    out.visual = trimesh.visual.TextureVisuals(uv=uv, material=material)
    points, index = weld(vertices[vmap])
    out.metadata["surface"] = surface_report(points, index[faces]).as_dict()
    out.metadata["uv"] = kind
    return out
