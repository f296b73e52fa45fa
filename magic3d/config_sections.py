"""The typed config dataclass of every stage, in one module that imports no torch.

``magic3d.config`` builds and checks a run's whole tree from these before any work starts, so a
bad key or value is refused in well under a second; each stage's module re-exports its own
(``from magic3d.stages.coarse import CoarseConfig`` is the same class) and reads it at work time.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from renderers.cameras import OrbitRange

Weighting = Literal["uniform", "sds", "dreamfusion"]
Encoding = Literal["hashgrid", "dense"]
Surface = Literal["sight", "density"]
# Parameters a dense encoding may hold (all levels): 64^3 voxels x 2 features x 8 levels is ~4M.
DENSE_MAX_PARAMS = 32_000_000


@dataclass
class SDSConfig:
    """How one stage distils a prior. Each stage holds its own (Magic3D's differ per stage)."""

    guidance_scale: float = 100.0
    t_min: float = 0.02
    t_max: float = 0.98
    # Linear annealing of t_max over the stage: None keeps t_max fixed.
    t_max_end: float | None = None
    weighting: Weighting = "sds"
    # Clip the per-element SDS gradient to [-grad_clip, grad_clip]; None disables.
    grad_clip: float | None = None


@dataclass
class FieldConfig:
    encoding: Encoding = "hashgrid"  # "dense": plain voxel grids per level, faster on CPUs at small max_res
    levels: int = 16
    features_per_level: int = 2
    log2_hashmap_size: int = 19
    min_res: int = 16
    max_res: int = 2048
    hidden: int = 64
    bound: float = 1.0  # the field lives in the sphere/cube of this radius
    # Magic3D's initial density bump at the centre, added to the raw density before the activation.
    # "magic3d": blob_density * (1 - |x| / blob_radius), solid inside the radius and strongly empty
    # outside it; "gaussian": blob_density * exp(-|x|^2 / (2 blob_radius^2)) (DreamFusion's shape).
    blob: str = "magic3d"
    blob_density: float = 10.0
    blob_radius: float = 0.5
    density_bias: float = 0.0  # added before softplus; the Gaussian blob wants about -1 to keep empty space empty
    background: str = "learned"  # "learned" (MLP of view direction) or "white"


def dense_resolutions(levels: int, min_res: int, max_res: int) -> list[int]:
    """Each level's side: geometric from ``min_res`` to ``max_res`` (at least 2 voxels)."""
    growth = math.exp((math.log(max_res) - math.log(min_res)) / (levels - 1)) if levels > 1 else 1.0
    return [max(2, round(min_res * growth**level)) for level in range(levels)]


def dense_values(levels: int, features: int, min_res: int, max_res: int) -> int:
    return features * sum(r**3 for r in dense_resolutions(levels, min_res, max_res))



@dataclass
class TextureConfig:
    # Sized for CPU runs: the paper-sized grid (16 levels, 2^19 entries, max_res 2048) has 16M
    # parameters and nerfstudio's PyTorch hash grid gives dense gradients, so every Adam step
    # touches all of them (seconds per step on CPU). GPU presets should set the paper sizes.
    levels: int = 12
    features_per_level: int = 2
    log2_hashmap_size: int = 15
    min_res: int = 16
    max_res: int = 512
    hidden: int = 32
    bound: float = 1.0


@dataclass
class OrbitConfig:
    elevation: tuple[float, float] = (-10.0, 45.0)
    azimuth: tuple[float, float] = (-180.0, 180.0)
    distance: tuple[float, float] = (3.0, 3.5)
    fov_y: tuple[float, float] = (40.0, 70.0)

    def range(self) -> OrbitRange:
        from renderers.cameras import OrbitRange

        return OrbitRange(self.elevation, self.azimuth, self.distance, self.fov_y)


@dataclass
class CoarseConfig:
    steps: int = 1000
    batch_size: int = 1
    resolution: int = 64
    samples_per_ray: int = 64
    lr: float = 1e-2  # hash grid
    mlp_lr_scale: float = 1.0  # density/albedo and background MLPs learn at lr * this
    field: FieldConfig = dataclasses.field(default_factory=FieldConfig)
    sds: SDSConfig = dataclasses.field(default_factory=SDSConfig)
    orbit: OrbitConfig = dataclasses.field(default_factory=OrbitConfig)
    # Probabilities of albedo / diffuse / textureless renders once the albedo-only warm-up is over.
    shading: tuple[float, float, float] = (0.2, 0.5, 0.3)
    albedo_warmup: int = 100
    ambient: float = 0.3
    # Regulariser weights are relative to the stage loss: SDS is 0.5 * ||grad||^2 summed over the
    # batch (threestudio's divides by the batch size, so at batch 1 these mean what its lambdas mean;
    # at batch B they weigh 1/B as much against SDS). Opacity sparsity and orientation are means
    # over rays (threestudio's orientation averages over rays with opacity > 0 instead).
    opacity_weight: float = 1e-3
    orientation_weight: float = 1e-2
    # (step, weight) points for the orientation weight, linear in between and flat beyond the ends
    # (threestudio's lambda_orient [0, 10, 1000, 5000] is ((0, 10), (5000, 1000))); empty:
    # orientation_weight throughout.
    orientation_schedule: tuple[tuple[float, float], ...] = ()
    occupancy_every: int = 16
    occupancy_resolution: int = 32
    occupancy_threshold: float = 0.5
    checkpoint_every: int = 100
    preview_every: int = 0  # 0: only a final preview
    preview_views: int = 4


def _fine_sds() -> SDSConfig:
    # Magic3D samples t in [0.02, 0.5] for the fine stage: detail, not new structure.
    return SDSConfig(t_min=0.02, t_max=0.5)


@dataclass
class FineConfig:
    steps: int = 300  # 0 skips optimisation: the mesh is extracted from the coarse density as is
    batch_size: int = 1
    resolution: int = 64  # render side in pixels (512 in the paper)
    # Tet grid size N as threestudio's isosurface_resolution counts it (its Magic3D refine uses 128):
    # N/2 cells per side of [-bound, bound]^3, (N/2 + 1)^3 vertices, 6 (N/2)^3 tets; even.
    # See magic3d.fields.dmtet.
    tet_resolution: int = 64
    bound: float = 1.0
    # Where the coarse field's surface is. "density": one density level, density_threshold or automatic
    # when None (magic3d.fields.dmtet.auto_density_threshold). "sight": behind half opacity along every
    # line of sight of the fine orbit, what the renders showed (magic3d.fields.sight): for fields whose
    # inside is a porous haze, as an amortized model's are. A single prompt's field is dense inside and
    # fades at its edges, where sight cuts too deep (a cube's corners: it reads as a sphere).
    surface: Surface = "density"
    density_threshold: float | None = None
    keep_largest_component: bool = True  # floaters of the coarse NeRF do not become meshes
    fill_hidden: bool = True  # hollows inside the coarse NeRF do not become inner shells
    # Tunnels up to this wide (world units) are sealed in the final mesh: a slit SDS never sees
    # becomes a hole through the object otherwise (see magic3d.fields.tunnels). 0 keeps them.
    seal_tunnels: float = 0.1
    # Handles whose bar is up to this thick (world units) are cut in the final mesh: a loop SDS drew
    # on a roof (a chimney bent into a ring) is a handle otherwise. A bar on no loop (a leg, a stem)
    # and anything thicker (a torus's ring) is kept (see magic3d.fields.tunnels). 0 keeps them.
    cut_handles: float = 0.1
    lr: float = 1e-2  # texture hash grid (its MLP gets a tenth)
    sdf_lr: float = 1e-2  # the SDF is roughly in world units, so this is ~the surface's move per step
    deform_lr: float = 1e-2
    texture: TextureConfig = dataclasses.field(default_factory=TextureConfig)
    texture_init_steps: int = 150  # regression onto the coarse albedo before the first step
    texture_init_points: int = 20000
    sds: SDSConfig = dataclasses.field(default_factory=_fine_sds)
    orbit: OrbitConfig = dataclasses.field(default_factory=OrbitConfig)
    shading: tuple[float, float, float] = (0.2, 0.5, 0.3)  # probabilities of albedo / diffuse / textureless
    ambient: float = 0.3
    smooth_normals: bool = True
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)
    # Scaled for SDS losses summed over the prior's input (as threestudio's Magic3D refine: 1e4 normal
    # consistency); image-loss fits want ~1e-3. Stable with the built-in prior at 1e4 (tet 32, 64 px).
    normal_consistency_weight: float = 1e4
    laplacian_weight: float = 1e4
    checkpoint_every: int = 100
    preview_every: int = 0  # 0: only a final preview
    preview_views: int = 4


@dataclass
class BakeConfig:
    texture_size: int = 1024  # 2048 is the most AR Quick Look accepts
    face_budget: int = 100_000  # decimate above this; xatlas takes ~1-2 min per 100k faces on a CPU; 0 keeps all
    normal_map: bool = True  # when decimation removed detail, bake it back as a tangent-space normal map
    merge_distance: float = 1e-5  # vertices closer than this (scene units) become one
    min_component_fraction: float = 0.01  # drop floating pieces with fewer faces than this share
    dilate_px: int = 16  # colour grown this far outside charts; beyond it the mean colour
    padding_px: int = 4  # empty texels between charts in the atlas
    # Larger meshes are unwrapped in spatial pieces (xatlas's chart growing is superlinear): CPU seconds
    # whole / in pieces of 8k: an amortized 12k-face cube 1.3 / 0.8, the builtin torus (14k) 1.05 / 0.75;
    # smaller pieces win less where packing many charts dominates (a bumpy 18k blob: 2.2 / 2.4).
    atlas_piece_faces: int = 8_000
    roughness: float = 0.8
    metallic: float = 0.0
    query_chunk: int = 262_144  # points per texture-field call
