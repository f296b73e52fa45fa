"""Asset writers: USD/USDA/USDZ, GLB, OBJ and world-stage assembly.

A library, not part of the pipeline: it never imports ``magic3d``. Every writer takes a
``trimesh.Trimesh`` with UVs and a ``PBRMaterial`` and writes to a temporary name first.
"""
