"""The materials content layer: a UsdPreviewSurface per asset, its base colour from the baked texture."""

from __future__ import annotations

from exporters.common import Surface


def define_material(stage, path, surf: Surface, texture_path: str | None, normal_path: str | None = None):
    """A UsdPreviewSurface whose base colour is ``texture_path`` (or the constant colour) and whose
    ``normal`` input, given ``normal_path``, reads a tangent-space map (raw, remapped to -1..1)."""
    from pxr import Gf, Sdf, UsdShade

    material = UsdShade.Material.Define(stage, path)
    shader = UsdShade.Shader.Define(stage, path.AppendChild("PreviewSurface"))
    shader.CreateIdAttr("UsdPreviewSurface")
    shader.CreateInput("roughness", Sdf.ValueTypeNames.Float).Set(float(surf.roughness))
    shader.CreateInput("metallic", Sdf.ValueTypeNames.Float).Set(float(surf.metallic))
    shader.CreateInput("useSpecularWorkflow", Sdf.ValueTypeNames.Int).Set(0)
    diffuse = shader.CreateInput("diffuseColor", Sdf.ValueTypeNames.Color3f)
    surface_out = shader.CreateOutput("surface", Sdf.ValueTypeNames.Token)
    material.CreateSurfaceOutput().ConnectToSource(surface_out)

    if texture_path is None:
        diffuse.Set(Gf.Vec3f(*surf.base_color[:3]))
        return material
    reader = UsdShade.Shader.Define(stage, path.AppendChild("TexCoordReader"))
    reader.CreateIdAttr("UsdPrimvarReader_float2")
    reader.CreateInput("varname", Sdf.ValueTypeNames.String).Set("st")
    reader_out = reader.CreateOutput("result", Sdf.ValueTypeNames.Float2)

    texture = uv_texture(stage, path.AppendChild("BaseColorTexture"), texture_path, "sRGB", reader_out)
    if any(abs(c - 1.0) > 1e-6 for c in surf.base_color):
        texture.CreateInput("scale", Sdf.ValueTypeNames.Float4).Set(Gf.Vec4f(*surf.base_color))
    rgb = texture.CreateOutput("rgb", Sdf.ValueTypeNames.Float3)
    diffuse.ConnectToSource(rgb)
    if normal_path is not None:
        normal = uv_texture(stage, path.AppendChild("NormalTexture"), normal_path, "raw", reader_out)
        normal.CreateInput("scale", Sdf.ValueTypeNames.Float4).Set(Gf.Vec4f(2.0, 2.0, 2.0, 1.0))
        normal.CreateInput("bias", Sdf.ValueTypeNames.Float4).Set(Gf.Vec4f(-1.0, -1.0, -1.0, 0.0))
        shader.CreateInput("normal", Sdf.ValueTypeNames.Normal3f).ConnectToSource(
            normal.CreateOutput("rgb", Sdf.ValueTypeNames.Float3))
    return material


def uv_texture(stage, path, file: str, colour_space: str, st_source):
    """A repeating UsdUVTexture reading ``file`` at the UVs ``st_source`` gives."""
    from pxr import Sdf, UsdShade

    texture = UsdShade.Shader.Define(stage, path)
    texture.CreateIdAttr("UsdUVTexture")
    texture.CreateInput("file", Sdf.ValueTypeNames.Asset).Set(Sdf.AssetPath(file))
    texture.CreateInput("sourceColorSpace", Sdf.ValueTypeNames.Token).Set(colour_space)
    texture.CreateInput("st", Sdf.ValueTypeNames.Float2).ConnectToSource(st_source)
    texture.CreateInput("wrapS", Sdf.ValueTypeNames.Token).Set("repeat")
    texture.CreateInput("wrapT", Sdf.ValueTypeNames.Token).Set("repeat")
    return texture
