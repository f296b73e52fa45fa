"""The ``control`` config section: a run that starts from the user's shape, textures the user's
mesh, or edits a finished run (issue 23). No torch: ``magic3d.config`` checks it before any work.

Paths live in the config so that they reach run.json and the run's identity; the planner adds
the SHA-256 of what they point at, so a file changed since is another run, never resumed into.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class ControlConfig:
    # ``generate --init-shape``: the coarse density starts from this mesh instead of the blob.
    init_shape: str = ""
    # ``magic3d texture``: this mesh is kept exactly and only a texture is optimised on it.
    texture_mesh: str = ""
    # ``magic3d edit``: the finished run folder this run starts from, and what it keeps.
    edit_from: str = ""
    edit_keep: Literal["geometry", "none"] = "none"
    # Set by the edit planner from the source's run.json: what the new run and its asset record.
    edit_prompt: str = ""
    edit_seed: int = 0
    # Set by the planner, not by hand: SHA-256 of the mesh file (or of the source run's run.json).
    source_sha256: str = ""
    # Distance of the user's mesh's farthest point from its bounding box's centre once placed in the
    # scene, in scene units: about what the built-in prior's objects reach (0.75 to 0.9), inside the
    # sphere of the coarse field's bound that renders see.
    extent: float = 0.8
    # Steps of regressing the coarse field's density onto the mesh's before SDS starts.
    init_fit_steps: int = 150
    # Width (scene units) of the band of signed distance over which the target density goes from
    # full inside to empty outside: a few voxels of the finest grid level, so the fit can follow it.
    init_width: float = 0.04
    init_points: int = 4096  # points per fitting step
    # ``--init-shape``: weight of the sketch-shape loss (magic3d.control.init_shape.sketch_shape_loss)
    # added to every coarse step, which keeps the field's occupancy at the mesh's away from its
    # surface; 0 turns it off (the fitted shape is then SDS's to change entirely).
    shape_weight: float = 1.0
    # Width (scene units) of the band about the surface where the loss fades out and SDS refines freely.
    shape_band: float = 0.05
    shape_points: int = 2048  # points per coarse step
    # ``--init-shape``: the fine stage's SDF learning rate times this (0: only its deformation and
    # texture train, so the user's shape keeps its cells; see init_shape.fine_config).
    init_fine_sdf_lr_scale: float = 0.0

    def edited_from(self) -> dict[str, str | int] | None:
        """What an edit run records of its source (run.json's ``edited_from``, the asset's provenance)."""
        if not self.edit_from:
            return None
        return {"run": self.edit_from, "prompt": self.edit_prompt, "seed": self.edit_seed, "keep": self.edit_keep}
