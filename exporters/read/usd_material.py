"""UsdShade materials as ``Material``: UsdPreviewSurface networks (and OmniPBR's MDL inputs).

The diffuse colour is a constant, or a ``UsdUVTexture`` whose ``scale`` multiplies the image, whose
``fallback`` is the colour when the image cannot be read, and whose ``wrapS``/``wrapT`` say how UVs
past 0..1 read (``useMetadata`` and unset read as ``repeat``, what viewers show for images with no
wrap metadata). The UV set is the ``varname`` of the primvar reader feeding the texture's ``st``,
moved by any ``UsdTransform2d`` between them.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from exporters.read.parts import WRAPS, Material

SPEC_DIFFUSE = (0.18, 0.18, 0.18)  # UsdPreviewSurface's diffuseColor when unset
SPEC_FALLBACK = (0.0, 0.0, 0.0, 1.0)  # UsdUVTexture's fallback when unset


class TextureCache:
    """Each image file opened once per read, so parts sharing a texture share the image."""

    def __init__(self) -> None:
        self.images: dict[str, Image.Image | None] = {}

    def get(self, asset_path: Any) -> Image.Image | None:
        resolved = str(getattr(asset_path, "resolvedPath", "") or "")
        if not resolved:
            return None
        if resolved not in self.images:
            self.images[resolved] = _open_image(resolved)
        return self.images[resolved]


def _open_image(resolved: str) -> Image.Image | None:
    try:
        if "[" in resolved and resolved.endswith("]"):  # inside a usdz package: "pkg.usdz[inner/path]"
            package, inner = resolved[:-1].split("[", 1)
            with zipfile.ZipFile(package) as zf:
                data = zf.read(inner)
            image = Image.open(io.BytesIO(data))
        else:
            image = Image.open(resolved)
        image.load()
        return image
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):  # missing or damaged: the fallback colour
        return None


def _resolve(put):
    """(value, None) for an input that holds a value, (None, output) for one fed by a shader's
    output; connections through the material's interface inputs are followed."""
    from pxr import UsdShade

    if not put:
        return None, None
    for attr in put.GetValueProducingAttributes():
        if UsdShade.Utils.GetType(attr.GetName()) == UsdShade.AttributeType.Output:
            return None, UsdShade.Output(attr)
        value = attr.Get()
        if value is not None:
            return value, None
    return None, None


def _value(shader, name: str, default=None):
    value = _resolve(shader.GetInput(name))[0]
    return default if value is None else value


def read_material(material, textures: TextureCache) -> tuple[Material, UvInput | None]:
    """(the material, where its texture's UVs come from; None without a texture)."""
    source = material.ComputeSurfaceSource()[0]
    if not source:
        mdl = material.ComputeSurfaceSource("mdl")[0]
        if mdl:
            return _omni_pbr(material, mdl, textures), None
        return Material(name=material.GetPrim().GetName(), base_color=(*SPEC_DIFFUSE, 1.0)), None
    name = material.GetPrim().GetName()
    roughness = float(_value(source, "roughness", 0.5))
    metallic = float(_value(source, "metallic", 0.0))
    value, output = _resolve(source.GetInput("diffuseColor"))
    if output is None:
        rgb = tuple(float(c) for c in (SPEC_DIFFUSE if value is None else value))
        return Material(name=name, base_color=(*rgb, 1.0), roughness=roughness, metallic=metallic), None
    from pxr import UsdShade

    texture = UsdShade.Shader(output.GetPrim())
    scale = tuple(float(c) for c in _value(texture, "scale", (1.0, 1.0, 1.0, 1.0)))
    image = textures.get(_value(texture, "file")) if texture.GetInput("file") else None
    if image is None:
        fallback = tuple(float(c) for c in _value(texture, "fallback", SPEC_FALLBACK))
        return Material(name=name, base_color=fallback, roughness=roughness, metallic=metallic), None
    image = _channel(image, output.GetBaseName())
    wraps = [str(_value(texture, w, "repeat")) for w in ("wrapS", "wrapT")]
    wraps = [w if w in WRAPS else "repeat" for w in wraps]
    return Material(name=name, base_color=scale, image=image, wrap_s=wraps[0], wrap_t=wraps[1],  # type: ignore[arg-type]
                    roughness=roughness, metallic=metallic), _uv_set(texture)


def _channel(image: Image.Image, output: str) -> Image.Image:
    """The image as the texture output the material reads: ``rgb``/``rgba`` whole, ``r``/``g``/``b``/``a`` as grey."""
    if output in ("r", "g", "b", "a"):
        rgba = image.convert("RGBA")
        band = rgba.getchannel("RGBA".index(output.upper()))
        return Image.merge("RGB", (band, band, band))
    return image.convert("RGB") if image.mode not in ("RGB", "RGBA") else image


@dataclass(frozen=True)
class UvInput:
    """Where a texture's ``st`` comes from: a primvar, moved by any ``UsdTransform2d`` on the way."""

    name: str | None
    transform: np.ndarray  # "3 3", acting on (u, v, 1)


def _uv_set(texture) -> UvInput:
    from pxr import UsdShade

    transform = np.eye(3)
    output = _resolve(texture.GetInput("st"))[1]
    for _ in range(4):  # through a UsdTransform2d or two to the primvar reader
        if output is None:
            break
        shader = UsdShade.Shader(output.GetPrim())
        varname = _value(shader, "varname")
        if varname is not None:
            return UvInput(str(varname), transform)
        if str(shader.GetIdAttr().Get() or "") == "UsdTransform2d":
            transform = transform @ _transform2d(shader)  # the nearer transform applies last
        output = _resolve(shader.GetInput("in"))[1]
    return UvInput(None, transform)


def _transform2d(shader) -> np.ndarray:
    """UsdTransform2d: ``in * scale``, then turned ``rotation`` degrees counter-clockwise, then moved."""
    sx, sy = (float(c) for c in _value(shader, "scale", (1.0, 1.0)))
    angle = np.radians(float(_value(shader, "rotation", 0.0)))
    tx, ty = (float(c) for c in _value(shader, "translation", (0.0, 0.0)))
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, tx], [s, c, ty], [0.0, 0.0, 1.0]]) @ np.diag([sx, sy, 1.0])


def _omni_pbr(material, shader, textures: TextureCache) -> Material:
    """OmniPBR (MDL) keeps its colour in ``diffuse_color_constant`` and ``diffuse_texture``."""
    name = material.GetPrim().GetName()
    rgb = tuple(float(c) for c in _value(shader, "diffuse_color_constant", (0.2, 0.2, 0.2)))
    tint = tuple(float(c) for c in _value(shader, "diffuse_tint", (1.0, 1.0, 1.0)))
    image = textures.get(_value(shader, "diffuse_texture")) if shader.GetInput("diffuse_texture") else None
    base = (1.0, 1.0, 1.0) if image is not None else rgb
    colour = tuple(b * t for b, t in zip(base, tint, strict=True))
    return Material(name=name, base_color=(*colour, 1.0), image=image,
                    roughness=float(_value(shader, "reflection_roughness_constant", 0.5)),
                    metallic=float(_value(shader, "metallic_constant", 0.0)))
