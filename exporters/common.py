"""What every writer shares: asset metadata, atomic file output, placement, and the mesh's material."""

from __future__ import annotations

import contextlib
import contextvars
import os
import re
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import trimesh
from PIL import Image

UP_AXES = ("Y", "Z")


@dataclass(frozen=True)
class AssetInfo:
    """Who made an asset and from what; written into every format that has room for it."""

    name: str = "asset"
    prompt: str = ""
    seed: int = 0
    generator: str = "magic3d"
    version: str = "0"
    prior: str = ""
    label: str = ""  # what the object is, one word ("mushroom"): USD's semantic class label
    edited_from: str = ""  # an edited asset's source: "<run folder> (<prompt>, seed <seed>)"

    def provenance(self) -> dict[str, str | int]:
        """What every format records of where the asset came from (USD customData, glTF extras, OBJ header)."""
        made = {"prompt": self.prompt, "seed": int(self.seed), "generator": f"{self.generator} {self.version}"}
        made = {**made, "prior": self.prior} if self.prior else made
        return {**made, "edited_from": self.edited_from} if self.edited_from else made


def weld(vertices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(unique positions "P 3", index "V" of each vertex's position): the copies a UV atlas makes
    along its seams become one shared point again."""
    points, inverse = np.unique(np.asarray(vertices, dtype=np.float64), axis=0, return_inverse=True)
    return points, inverse.reshape(-1)


@dataclass(frozen=True)
class Surface:
    """The parts of a mesh's material the writers understand (a PBR metallic-roughness subset)."""

    uv: np.ndarray | None  # "V 2" float, v = 0 at the bottom of the image (OpenGL, as trimesh)
    image: Image.Image | None  # base colour, sRGB
    base_color: tuple[float, float, float, float]  # linear factor multiplied with the texture, 0..1
    roughness: float
    metallic: float
    normal_image: Image.Image | None = None  # tangent-space normal map (OpenGL convention: green up)


class OutsideOutput(OSError):
    """A write would land outside the output folder (through a link, or a path that leaves it)."""


_WRITE_ROOT: contextvars.ContextVar[Path | None] = contextvars.ContextVar("write_root", default=None)


@contextlib.contextmanager
def writes_confined_to(root: Path) -> Iterator[Path]:
    """Inside the block every folder ``make_dirs`` (and so ``atomic_output``) writes into must lie
    under ``root`` with no link on the way: a link planted in the output tree is never followed.
    ``root`` itself may be a link; the user named it."""
    token = _WRITE_ROOT.set(Path(os.path.abspath(root)))
    try:
        yield _WRITE_ROOT.get()  # type: ignore[misc]
    finally:
        _WRITE_ROOT.reset(token)


def link_on_the_way(root: Path, path: Path) -> Path | None:
    """The first link (or non-folder) between ``root`` and ``path``'s parent folders, walking
    down from ``root``; ``path`` itself when it lies outside ``root``; None when the way is clean."""
    root, path = Path(os.path.abspath(root)), Path(os.path.abspath(path))
    try:
        parts = path.relative_to(root).parts
    except ValueError:
        return path
    here = root
    for part in parts:
        here = here / part
        try:
            mode = os.lstat(here).st_mode
        except FileNotFoundError:
            return None  # the rest will be made fresh, as folders
        if stat.S_ISLNK(mode):
            return here
    return None


def make_dirs(folder: Path) -> Path:
    """``mkdir -p`` that refuses to follow a link below the write root (see writes_confined_to)."""
    folder = Path(folder)
    root = _WRITE_ROOT.get()
    if root is not None:
        bad = link_on_the_way(root, folder)
        if bad is not None:
            what = "is a link" if bad.is_symlink() else "is outside the output folder"
            raise OutsideOutput(f"refusing to write through {str(bad)!r}: it {what} ({str(root)!r} is the output folder)")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@contextlib.contextmanager
def atomic_output(path: Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path in ``path``'s folder; rename it onto ``path`` only if the block succeeds.

    The temporary name keeps the real extension (``suffix``) because USD picks its file format from it.
    Renaming replaces a link at ``path`` itself rather than writing through it.
    """
    path = Path(path)
    make_dirs(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + (suffix or path.suffix), dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        os.chmod(tmp_path, default_file_mode())  # mkstemp's 0600 would hide assets from other users
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


# atomic_output's temporary names: ".<name>.<8 random characters>.tmp<ext>"
TEMP_NAME = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp(\.[A-Za-z0-9]+)?$")


def sweep_temp_files(folder: Path) -> list[Path]:
    """Remove the temporaries that killed writers left under ``folder`` (``atomic_output``'s files
    and the USDZ packager's work folders), never following links out of it; returns what was removed."""
    import shutil

    removed = []
    for path in sorted(Path(folder).rglob(".*.tmp*")):
        if not TEMP_NAME.match(path.name) or path.is_symlink() or not path.exists():
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def default_file_mode() -> int:
    """What ``open()`` would give a new file: 0666 less the process umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def write_png(image: Image.Image, path: Path) -> Path:
    with atomic_output(path) as tmp:
        image.save(tmp, format="PNG")
    return Path(path)


def check_up_axis(up_axis: str) -> str:
    axis = up_axis.upper()
    if axis not in UP_AXES:
        raise ValueError(f"up_axis must be 'Y' or 'Z', not {up_axis!r}")
    return axis


def placement(vertices: np.ndarray, up_axis: str = "Y", size_m: float | None = 1.0) -> np.ndarray:
    """The 4x4 transform from generator units to the exported asset's frame.

    The largest side of the bounding box becomes ``size_m`` metres (``None`` keeps the scale), the
    footprint is centred on the origin and the lowest point sits at height 0, so AR viewers and
    world stages put the object on the ground; ``up_axis="Z"`` then turns Y-up into Z-up with the
    front (+Z) facing -Y, as Blender and most Z-up tools expect.
    """
    axis = check_up_axis(up_axis)
    if size_m is not None and not size_m > 0:
        raise ValueError(f"size_m must be positive, not {size_m!r}")
    lo, hi = vertices.min(0), vertices.max(0)
    largest = float((hi - lo).max())
    scale = 1.0 if size_m is None or largest <= 0 else size_m / largest
    move = np.eye(4)
    move[:3, 3] = -np.array([(lo[0] + hi[0]) / 2, lo[1], (lo[2] + hi[2]) / 2])
    resize = np.diag([scale, scale, scale, 1.0])
    turn = np.eye(4)
    if axis == "Z":
        turn[:3, :3] = [[1, 0, 0], [0, 0, -1], [0, 1, 0]]
    return turn @ resize @ move


def placed(mesh: trimesh.Trimesh, transform: np.ndarray) -> trimesh.Trimesh:
    """A copy of ``mesh`` moved by ``transform``, with its UVs and material untouched."""
    # Built afresh rather than mesh.copy(): a copy drops normals the caller set (the baker's
    # seam-free normals) and trimesh would recompute them per UV island.
    linear = transform[:3, :3]
    vertices = np.asarray(mesh.vertices) @ linear.T + transform[:3, 3]
    normals = np.asarray(mesh.vertex_normals) @ np.linalg.inv(linear)
    normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
    out = trimesh.Trimesh(vertices, np.asarray(mesh.faces), vertex_normals=normals, process=False)
    out.visual = mesh.visual.copy()
    return out


def surface(mesh: trimesh.Trimesh) -> Surface:
    """UVs, base-colour image and PBR constants from whatever visuals the mesh carries."""
    visual = mesh.visual
    uv = None
    image = None
    normal_image = None
    base = (1.0, 1.0, 1.0, 1.0)
    roughness, metallic = 1.0, 0.0
    if isinstance(visual, trimesh.visual.texture.TextureVisuals):
        if visual.uv is not None and len(visual.uv) == len(mesh.vertices):
            uv = np.asarray(visual.uv, dtype=np.float64)
        mat = visual.material
        if isinstance(mat, trimesh.visual.material.SimpleMaterial):
            # A bare image gets trimesh's 0.4 grey "diffuse"; with a texture the image is the colour.
            bare = mat.image is not None
            mat = mat.to_pbr()
            if bare:
                mat.baseColorFactor = np.array([255, 255, 255, 255], dtype=np.uint8)
        if isinstance(mat, trimesh.visual.material.PBRMaterial):
            image = mat.baseColorTexture
            normal_image = mat.normalTexture
            if mat.baseColorFactor is not None:
                base = tuple(float(c) for c in np.asarray(mat.baseColorFactor, dtype=np.float64) / 255.0)
            if mat.roughnessFactor is not None:
                roughness = float(mat.roughnessFactor)
            if mat.metallicFactor is not None:
                metallic = float(mat.metallicFactor)
    elif isinstance(visual, trimesh.visual.color.ColorVisuals) and visual.kind in ("face", "vertex"):
        rgba = np.asarray(visual.main_color, dtype=np.float64) / 255.0
        base = tuple(float(c) for c in rgba)
    if image is not None and image.mode not in ("RGB", "RGBA"):
        image = image.convert("RGB")
    if uv is None:
        image = None
    if normal_image is not None and normal_image.mode != "RGB":
        normal_image = normal_image.convert("RGB")
    if uv is None:
        normal_image = None
    return Surface(uv=uv, image=image, base_color=base, roughness=roughness, metallic=metallic,  # type: ignore[arg-type]
                   normal_image=normal_image)


def pbr_material(surf: Surface, name: str = "material") -> trimesh.visual.material.PBRMaterial:
    """An explicit PBR material (a bare image would export trimesh's 0.4 grey factor)."""
    factor = np.round(np.asarray(surf.base_color) * 255).astype(np.uint8)
    return trimesh.visual.material.PBRMaterial(
        name=name,
        baseColorTexture=surf.image,
        normalTexture=surf.normal_image,
        baseColorFactor=factor,
        roughnessFactor=surf.roughness,
        metallicFactor=surf.metallic,
        doubleSided=False,
    )
