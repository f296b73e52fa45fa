"""The physics content layer: a rigid body that falls and rests in a physics-enabled world.

The mesh collides through its convex hull, or through a convex decomposition when the hull would
fill in much of the shape (a torus's hole, a table's legs); the mass is the welded surface's
volume times the density; a physics material gives friction and bounce.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import trimesh

# Below this share of its convex hull's volume, a shape is concave enough that a hull collider
# would be wrong to the eye (a torus is ~0.45, a cube 1.0, a sphere ~0.99).
HULL_FILL = 0.85


@dataclass(frozen=True)
class Physics:
    density: float = 700.0  # kg/m^3: wood
    static_friction: float = 0.5
    dynamic_friction: float = 0.4
    restitution: float = 0.1

    def __post_init__(self) -> None:
        for name in ("density", "static_friction", "dynamic_friction", "restitution"):
            value = getattr(self, name)
            if not (np.isfinite(value) and value >= 0) or (name == "density" and value <= 0):
                least = "positive" if name == "density" else "non-negative"
                raise ValueError(f"physics {name} must be a finite, {least} number, not {value!r}")


def volume_m3(surface: trimesh.Trimesh) -> float:
    """Enclosed volume of a closed surface (its hull's for an open one, which encloses nothing)."""
    return float(abs(surface.volume)) if surface.is_watertight else float(surface.convex_hull.volume)


def collider_approximation(surface: trimesh.Trimesh) -> str:
    hull = surface.convex_hull.volume
    filled = volume_m3(surface) / hull if hull > 0 else 1.0
    return "convexHull" if filled >= HULL_FILL else "convexDecomposition"


def define_physics(stage, root_path, mesh_path, surface: trimesh.Trimesh, physics: Physics) -> dict[str, float | str]:
    """Rigid body and mass on the root, collision on the mesh, a physics material under
    ``/<asset>/Physics``; returns what was authored (mass, volume, approximation)."""
    from pxr import UsdGeom, UsdPhysics, UsdShade

    root = stage.OverridePrim(root_path)
    UsdPhysics.RigidBodyAPI.Apply(root)
    volume = volume_m3(surface)
    if volume > 0:  # a flat or open sheet encloses nothing: simulators take the material's density
        UsdPhysics.MassAPI.Apply(root).CreateMassAttr(float(volume * physics.density))

    mesh = stage.OverridePrim(mesh_path)
    UsdPhysics.CollisionAPI.Apply(mesh)
    approximation = collider_approximation(surface)
    UsdPhysics.MeshCollisionAPI.Apply(mesh).CreateApproximationAttr(approximation)

    UsdGeom.Scope.Define(stage, root_path.AppendChild("Physics"))
    material = UsdShade.Material.Define(stage, root_path.AppendPath("Physics/PhysicsMaterial"))
    api = UsdPhysics.MaterialAPI.Apply(material.GetPrim())
    api.CreateStaticFrictionAttr(float(physics.static_friction))
    api.CreateDynamicFrictionAttr(float(physics.dynamic_friction))
    api.CreateRestitutionAttr(float(physics.restitution))
    api.CreateDensityAttr(float(physics.density))
    # The "physics" purpose: renderers keep the look material, simulators read this one.
    UsdShade.MaterialBindingAPI.Apply(mesh).Bind(material, UsdShade.Tokens.fallbackStrength, "physics")
    return {"mass_kg": float(volume * physics.density), "volume_m3": volume, "collider": approximation}


WOOD = Physics()  # the default material of generated assets
