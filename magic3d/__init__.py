"""magic3d: text to textured 3D assets (coarse NeRF, DMTet refinement, USD/GLB/OBJ export)."""

__version__ = "0.1.0"


def generate(*args, **kwargs):
    """Run the whole pipeline for one prompt; see ``magic3d.pipeline.generate``."""
    from magic3d.pipeline import generate as _generate

    return _generate(*args, **kwargs)
