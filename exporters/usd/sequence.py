"""One USD file holding a sequence of assets as a variant set: one variant per frame, each a
reference to that frame's own asset file (relative paths, so the folder moves as a whole).

usdview and Blender open it with the default (first) variant selected; the variant set
``frame`` switches between them.
"""

from __future__ import annotations

from pathlib import Path

from exporters.common import check_up_axis
from exporters.usd import _save, prim_safe


def write_variant_sequence(path: str | Path, name: str, frames: list[tuple[str, str]], up_axis: str = "Y",
                           set_name: str = "frame") -> Path:
    """Write ``path`` (``.usda``/``.usdc``): prim ``/name`` with variant set ``set_name`` holding one
    variant per ``(variant name, asset path relative to path's folder)``, the first selected."""
    from pxr import Sdf, UsdGeom

    if not frames:
        raise ValueError("a sequence needs at least one frame")
    root = prim_safe(name)
    # Authored on a bare layer, not a stage: a stage would compose the references from an
    # anonymous layer's (missing) folder and warn about every frame.
    layer = Sdf.Layer.CreateAnonymous(".usda")
    layer.defaultPrim = root
    layer.pseudoRoot.SetInfo(UsdGeom.Tokens.upAxis, UsdGeom.Tokens.y if check_up_axis(up_axis) == "Y" else UsdGeom.Tokens.z)
    layer.pseudoRoot.SetInfo(UsdGeom.Tokens.metersPerUnit, 1.0)
    prim = Sdf.PrimSpec(layer.pseudoRoot, root, Sdf.SpecifierDef, "Xform")
    variants = Sdf.VariantSetSpec(prim, set_name)
    for variant, asset in frames:
        spec = Sdf.VariantSpec(variants, prim_safe(variant))
        spec.primSpec.referenceList.Prepend(Sdf.Reference(asset))
    prim.variantSetNameList.Prepend(set_name)
    prim.variantSelections[set_name] = prim_safe(frames[0][0])
    return _save(layer, Path(path))
