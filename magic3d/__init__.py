"""magic3d: text to textured 3D assets (coarse NeRF, DMTet refinement, USD/GLB/OBJ export)."""

__version__ = "0.1.0"


def generate(*args, **kwargs):
    """Run the whole pipeline for one prompt; see ``magic3d.pipeline.generate``."""
    from magic3d.pipeline import generate as _generate

    return _generate(*args, **kwargs)


def texture(*args, **kwargs):
    """Texture the user's mesh from a prompt, keeping its geometry; see ``magic3d.control.plan.texture``."""
    from magic3d.control.plan import texture as _texture

    return _texture(*args, **kwargs)


def edit(*args, **kwargs):
    """Edit a finished run with a new prompt; see ``magic3d.control.plan.edit``."""
    from magic3d.control.plan import edit as _edit

    return _edit(*args, **kwargs)
