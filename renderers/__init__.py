"""Rendering library: cameras, volume rendering and mesh rasterization.

A library, not part of the pipeline: it never imports ``magic3d``.
"""
