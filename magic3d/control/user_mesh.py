"""The user's own mesh (``--init-shape``, ``magic3d texture``) and source run (``magic3d edit``):
read, checked and placed in the scene before any work.

A mesh must be readable (any file ``exporters.read`` reads), hold faces, be closed once its
seam copies are welded (the initial density needs an inside; the baked asset must be closed, as
every magic3d asset is) and hold at most ``MAX_FACES`` faces. It is taken as Y-up (glTF's and
OBJ's convention; USD is turned Y-up by the reader) and placed by ``scene_frame``: its bounding
box centred on the origin and scaled so that its farthest point lies ``control.extent`` from it.

No torch here, and numpy only once there is a mesh: ``magic3d.config.validate`` calls
``resolve_sources`` while planning every command, refusals included.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from magic3d.errors import InputError

if TYPE_CHECKING:
    import numpy as np
    import trimesh

    from magic3d.control.config import ControlConfig

MAX_FACES = 1_000_000  # above this the SDF voxelisation and the rasterizer's passes stop being minutes
MAX_FILE_BYTES = 2 << 30


@dataclass(frozen=True)
class SceneFrame:
    """``scene = (file - centre) * scale``: where a file's points sit in the fields' scene."""

    centre: np.ndarray  # "3"
    scale: float

    def to_scene(self, points: np.ndarray) -> np.ndarray:
        import numpy as np

        return (np.asarray(points, dtype=np.float64) - self.centre) * self.scale


def read_user_mesh(path: str | Path, what: str = "mesh file") -> trimesh.Trimesh:
    """The file's parts merged into one mesh (UVs and material kept when the parts look alike),
    or one ``InputError`` line saying why it cannot be used."""
    import numpy as np

    from exporters.read import merged
    from magic3d.preview import READABLE, read_parts
    from magic3d.storage import require_file

    path = Path(path)
    if path.suffix.lower() not in READABLE:
        raise InputError(f"Cannot use {path.name!r} as a {what}: expected one of {', '.join(READABLE)}.")
    require_file(path, what)
    if path.stat().st_size > MAX_FILE_BYTES:
        raise InputError(f"The {what} {str(path)!r} is larger than {MAX_FILE_BYTES >> 30} GiB; give a smaller mesh.")
    mesh = merged(read_parts(path))
    faces = len(mesh.faces)
    if faces == 0:
        raise InputError(f"{str(path)!r} holds no triangle mesh; give a file with faces.")
    if faces > MAX_FACES:
        raise InputError(f"{str(path)!r} has {faces:,} faces, more than {MAX_FACES:,}; decimate it first.")
    if not float(np.ptp(np.asarray(mesh.vertices), axis=0).max()) > 0:
        raise InputError(f"{str(path)!r} is a single point; give a mesh with a size.")
    if not is_closed(np.asarray(mesh.vertices), np.asarray(mesh.faces)):
        raise InputError(f"{str(path)!r} is not a closed surface (it has holes or open edges once its vertices "
                         "are welded); close it first (e.g. Blender's Fill Holes or 3D-Print Toolbox).")
    return mesh


def is_closed(vertices: np.ndarray, faces: np.ndarray) -> bool:
    """Every edge shared by exactly two faces after welding coincident points (UV seams)."""
    import trimesh

    welded = trimesh.Trimesh(vertices, faces, process=False)
    welded.merge_vertices(merge_tex=True, merge_norm=True)
    return bool(welded.is_watertight)


def scene_frame(vertices: np.ndarray, extent: float) -> SceneFrame:
    """Bounding box centred on the origin, farthest point at ``extent``.

    The radius, not the largest side, because the coarse renderer clips rays to a sphere of the
    field's bound: a cube placed by its side (half-side 0.6) put its corners outside it, where
    renders never show them, and 100 SDS steps rounded it into a sphere (IoU with the input 0.56;
    placed by its radius, half-side 0.46, it stayed a cube).
    """
    import numpy as np

    lo, hi = np.min(vertices, axis=0), np.max(vertices, axis=0)
    centre = (lo + hi) / 2.0
    radius = float(np.max(np.linalg.norm(np.asarray(vertices) - centre, axis=1)))
    return SceneFrame(centre=centre, scale=float(extent) / radius)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def resolve_sources(control: ControlConfig) -> None:
    """Check what ``control`` points at and record its SHA-256 (config validation calls this)."""
    from magic3d.errors import ConfigError

    if not 0 < control.extent <= 1:
        raise ConfigError(f"Config key 'control.extent' must lie in (0, 1] (scene units), not {control.extent}.")
    if not control.init_width > 0:
        raise ConfigError(f"Config key 'control.init_width' must be positive, not {control.init_width}.")
    given = [k for k in ("init_shape", "texture_mesh", "edit_from") if getattr(control, k)]
    if len(given) > 1:
        raise InputError(f"Give at most one of control.{', control.'.join(given)}: a run starts from one source.")
    if not given:
        return
    if given[0] == "edit_from":  # ``control_plan.finished_run`` checks the rest of the source run
        from magic3d.storage import require_file

        control.source_sha256 = file_sha256(require_file(Path(control.edit_from) / "run.json", "source run record"))
        return
    path = Path(getattr(control, given[0]))
    read_user_mesh(path, "init shape" if given[0] == "init_shape" else "mesh to texture")
    control.source_sha256 = file_sha256(path)
