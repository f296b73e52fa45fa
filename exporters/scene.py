"""A world stage that places many finished assets on a grid, each behind a payload.

Every asset becomes an interface prim ``/World/<name>`` carrying what a scene browser needs
without loading the asset (kind, assetInfo, extentsHint), with the geometry behind a payload
arc, so a world of hundreds of assets opens instantly and each asset loads on demand.

A library module: it never imports ``magic3d``; it raises ``ValueError`` on bad input.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from exporters.common import atomic_output, make_dirs

_PRIM_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_KINDS = ("component", "assembly", "group", "subcomponent")

Vec3 = tuple[float, float, float]


@dataclass(frozen=True)
class WorldEntry:
    """One asset for the world.

    ``name`` is the prim name (a slug; dashes become underscores). ``extent_min``/``extent_max``
    are the asset's bounds in its own units, with the same up axis as the world.
    """

    name: str
    asset_path: Path
    extent_min: Vec3
    extent_max: Vec3
    kind: str = "component"
    display_name: str = ""
    custom_data: dict[str, str | int | float] = field(default_factory=dict)


@dataclass(frozen=True)
class GridLayout:
    """How assets are spread on the ground plane: cells as big as the largest footprint plus a gap."""

    gap: float = 0.25  # fraction of the cell size left empty between neighbours
    columns: int | None = None  # None: a near-square grid


def prim_name(name: str) -> str:
    """A valid USD prim name for a slug: ``a-red-cube`` -> ``a_red_cube``, ``3-cats`` -> ``_3_cats``."""
    out = re.sub(r"[^A-Za-z0-9_]", "_", name)
    if not out or not (out[0].isalpha() or out[0] == "_"):
        out = "_" + out
    return out


def asset_extent(path: str | Path) -> tuple[Vec3, Vec3]:
    """The bounds of an asset file's default prim (or its whole stage), in its own units."""
    from pxr import Usd, UsdGeom

    stage = Usd.Stage.Open(str(path))
    if stage is None:
        raise ValueError(f"cannot open {str(path)!r} as a USD stage")
    root = stage.GetDefaultPrim() or stage.GetPseudoRoot()
    cache = UsdGeom.BBoxCache(Usd.TimeCode.Default(), [UsdGeom.Tokens.default_, UsdGeom.Tokens.render])
    box = cache.ComputeWorldBound(root).ComputeAlignedRange()
    if box.IsEmpty():
        raise ValueError(f"{str(path)!r} has no geometry with bounds")
    lo, hi = box.GetMin(), box.GetMax()
    return (lo[0], lo[1], lo[2]), (hi[0], hi[1], hi[2])


def asset_bounds(path: str | Path) -> dict[str, object]:
    """``{"min", "max", "up_axis", "meters_per_unit"}`` of an asset file, for building a world later."""
    from pxr import Usd, UsdGeom

    lo, hi = asset_extent(path)
    stage = Usd.Stage.Open(str(path))
    return {
        "min": list(lo),
        "max": list(hi),
        "up_axis": str(UsdGeom.GetStageUpAxis(stage)),
        "meters_per_unit": float(UsdGeom.GetStageMetersPerUnit(stage)),
    }


def grid_positions(entries: Sequence[WorldEntry], up_axis: str, layout: GridLayout) -> list[Vec3]:
    """Translations that centre each asset in its grid cell and stand it on the ground (up = 0)."""
    up = {"Y": 1, "Z": 2}[up_axis]
    across, along = (0, 2) if up == 1 else (0, 1)
    sizes = [
        max(e.extent_max[across] - e.extent_min[across], e.extent_max[along] - e.extent_min[along])
        for e in entries
    ]
    cell = max([*sizes, 1e-6]) * (1.0 + layout.gap)
    columns = layout.columns or max(1, math.ceil(math.sqrt(len(entries))))
    positions = []
    for i, e in enumerate(entries):
        row, col = divmod(i, columns)
        centre = [(lo + hi) / 2 for lo, hi in zip(e.extent_min, e.extent_max, strict=True)]
        t = [0.0, 0.0, 0.0]
        t[across] = col * cell - centre[across]
        t[along] = row * cell - centre[along]
        t[up] = 0.0 - e.extent_min[up]  # 0.0 - x: no "-0" in the file when the asset already stands on 0
        positions.append((t[0], t[1], t[2]))
    return positions


def _check(entries: Sequence[WorldEntry], up_axis: str) -> list[str]:
    if up_axis not in ("Y", "Z"):
        raise ValueError(f"up_axis must be 'Y' or 'Z', not {up_axis!r}")
    names = [prim_name(e.name) for e in entries]
    for e, n in zip(entries, names, strict=True):
        if not _PRIM_NAME.match(n):
            raise ValueError(f"cannot make a prim name from {e.name!r}")
        if e.kind not in _KINDS:
            raise ValueError(f"kind must be one of {_KINDS}, not {e.kind!r}")
        lo, hi = e.extent_min, e.extent_max
        if len(lo) != 3 or len(hi) != 3 or any(not (a <= b) for a, b in zip(lo, hi, strict=True)):
            raise ValueError(f"extent of {e.name!r} must be two 3-vectors with min <= max")
        if not all(math.isfinite(v) for v in (*lo, *hi)):
            raise ValueError(f"extent of {e.name!r} is not finite")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"two assets would share the prim name(s) {dupes}; give them distinct names")
    return names


def _relative(asset: Path, folder: Path) -> str:
    rel = os.path.relpath(Path(asset).resolve(), folder.resolve()).replace(os.sep, "/")
    return rel if rel.startswith("../") else f"./{rel}"


def write_world(
    assets: Sequence[WorldEntry],
    path: str | Path,
    up_axis: str = "Y",
    meters_per_unit: float = 1.0,
    layout: GridLayout | None = None,
) -> Path:
    """Write ``path`` (.usda) placing every asset under ``/World/<name>``; atomic (temp + rename).

    Asset paths are stored relative to the world file so the folder can be moved as a whole.
    An empty list writes a valid, empty world.
    """
    from pxr import Gf, Kind, Sdf, Usd, UsdGeom, Vt

    path = Path(path)
    if path.suffix != ".usda":
        raise ValueError(f"the world stage must be a .usda file, not {path.name!r}")
    names = _check(assets, up_axis)
    folder = make_dirs(path.parent).resolve()

    layer = Sdf.Layer.CreateAnonymous("world.usda")
    stage = Usd.Stage.Open(layer, load=Usd.Stage.LoadNone)
    UsdGeom.SetStageUpAxis(stage, UsdGeom.Tokens.y if up_axis == "Y" else UsdGeom.Tokens.z)
    UsdGeom.SetStageMetersPerUnit(stage, meters_per_unit)
    world = UsdGeom.Xform.Define(stage, "/World")
    stage.SetDefaultPrim(world.GetPrim())
    Usd.ModelAPI(world.GetPrim()).SetKind(Kind.Tokens.assembly)

    positions = grid_positions(assets, up_axis, layout or GridLayout())
    for entry, name, offset in zip(assets, names, positions, strict=True):
        rel = _relative(entry.asset_path, folder)
        xform = UsdGeom.Xform.Define(stage, f"/World/{name}")
        prim = xform.GetPrim()
        model = Usd.ModelAPI(prim)
        model.SetKind(entry.kind)
        model.SetAssetName(entry.name)
        model.SetAssetIdentifier(Sdf.AssetPath(rel))
        if entry.display_name:
            prim.SetDisplayName(entry.display_name)
        # Bounds lofted above the payload: readable with nothing loaded (purpose "default" only).
        UsdGeom.ModelAPI.Apply(prim).SetExtentsHint(
            Vt.Vec3fArray([Gf.Vec3f(*entry.extent_min), Gf.Vec3f(*entry.extent_max)])
        )
        xform.AddTranslateOp().Set(Gf.Vec3d(*offset))
        for key, value in entry.custom_data.items():
            prim.SetCustomDataByKey(key, value)
        prim.GetPayloads().AddPayload(Sdf.Payload(rel))

    text = layer.ExportToString()
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path
