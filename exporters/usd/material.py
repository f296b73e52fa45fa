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

    texture = UsdShade.Shader.Define(stage, path.AppendChild("BaseColorTexture"))
    texture.CreateIdAttr("UsdUVTexture")
    texture.CreateInput("file", Sdf.ValueTypeNames.Asset).Set(Sdf.AssetPath(texture_path))
    texture.CreateInput("sourceColorSpace", Sdf.ValueTypeNames.Token).Set("sRGB")
    texture.CreateInput("st", Sdf.ValueTypeNames.Float2).ConnectToSource(reader_out)
    texture.CreateInput("wrapS", Sdf.ValueTypeNames.Token).Set("repeat")
    texture.CreateInput("wrapT", Sdf.ValueTypeNames.Token).Set("repeat")
    if any(abs(c - 1.0) > 1e-6 for c in surf.base_color):
        texture.CreateInput("scale", Sdf.ValueTypeNames.Float4).Set(Gf.Vec4f(*surf.base_color))
    rgb = texture.CreateOutput("rgb", Sdf.ValueTypeNames.Float3)
    diffuse.ConnectToSource(rgb)
    if normal_path is not None:
        normal = UsdShade.Shader.Define(stage, path.AppendChild("NormalTexture"))
        normal.CreateIdAttr("UsdUVTexture")
        normal.CreateInput("file", Sdf.ValueTypeNames.Asset).Set(Sdf.AssetPath(normal_path))
        normal.CreateInput("sourceColorSpace", Sdf.ValueTypeNames.Token).Set("raw")
        normal.CreateInput("st", Sdf.ValueTypeNames.Float2).ConnectToSource(reader_out)
        normal.CreateInput("wrapS", Sdf.ValueTypeNames.Token).Set("repeat")
        normal.CreateInput("wrapT", Sdf.ValueTypeNames.Token).Set("repeat")
        normal.CreateInput("scale", Sdf.ValueTypeNames.Float4).Set(Gf.Vec4f(2.0, 2.0, 2.0, 1.0))
        normal.CreateInput("bias", Sdf.ValueTypeNames.Float4).Set(Gf.Vec4f(-1.0, -1.0, -1.0, 0.0))
        shader.CreateInput("normal", Sdf.ValueTypeNames.Normal3f).ConnectToSource(
            normal.CreateOutput("rgb", Sdf.ValueTypeNames.Float3))
    return material
