"""One rasterizer interface (nvdiffrast's), two backends: nvdiffrast on CUDA, ours in PyTorch on CPU.

``rasterize(clip_pos "B V 4", faces "F 3", (H, W)) -> rast "B H W 4"`` holds (u, v, z/w, triangle id + 1)
per pixel, 0 in the last channel where no triangle covers it; ``u, v`` are the perspective-correct
barycentric weights of the triangle's first two vertices. Row 0 of every image is NDC y = -1.

``cull_back=True`` is the caller's word that the triangles facing away from the camera are hidden
behind others, as on a closed surface wound counter-clockwise seen from outside: under
``Cameras.mvp()``, which flips clip-space Y, those are the triangles counter-clockwise in NDC. A
backend may skip them (ours does: a third less work for a turntable) or draw them (nvdiffrast);
the image is the same either way.
"""

from __future__ import annotations

import warnings
from typing import Protocol

import torch
from jaxtyping import Float, Int
from torch import Tensor

from renderers.raster.torch_backend import TorchRasterizer


class Rasterizer(Protocol):
    name: str

    def rasterize(
        self, clip_pos: Float[Tensor, "B V 4"], faces: Int[Tensor, "F 3"], resolution: tuple[int, int],
        cull_back: bool = False,
    ) -> Float[Tensor, "B H W 4"]: ...

    def interpolate(
        self, attr: Tensor, rast: Float[Tensor, "B H W 4"], faces: Int[Tensor, "F 3"]
    ) -> Float[Tensor, "B H W C"]: ...

    def texture(
        self, tex: Float[Tensor, "B Ht Wt C"], uv: Float[Tensor, "B H W 2"], filter: str = "linear"
    ) -> Float[Tensor, "B H W C"]: ...

    def antialias(
        self, color: Float[Tensor, "B H W C"], rast: Float[Tensor, "B H W 4"],
        clip_pos: Float[Tensor, "B V 4"], faces: Int[Tensor, "F 3"],
    ) -> Float[Tensor, "B H W C"]: ...


def get_rasterizer(device: torch.device | str = "cpu", backend: str = "auto") -> Rasterizer:
    """nvdiffrast on CUDA when it is installed (the ``gpu`` extra), the PyTorch backend otherwise.

    ``backend="torch"`` forces the CPU implementation (it also runs on CUDA tensors, slowly);
    ``backend="nvdiffrast"`` raises instead of falling back when nvdiffrast cannot be used.
    """
    device = torch.device(device)
    if backend not in ("auto", "torch", "nvdiffrast"):
        raise ValueError(f"unknown rasterizer backend {backend!r}; use auto, torch or nvdiffrast")
    if backend == "torch" or (backend == "auto" and device.type != "cuda"):
        return TorchRasterizer()
    try:
        from renderers.raster.nvdiffrast_backend import NvdiffrastRasterizer

        return NvdiffrastRasterizer(device)
    except (ImportError, RuntimeError, OSError) as exc:
        # RuntimeError/OSError: nvdiffrast is installed but its CUDA plugin failed to build or load.
        if backend == "nvdiffrast":
            raise
        warn_fallback_once(device, exc)
        return TorchRasterizer()


_fallback_warned = False  # one warning per process: every fine-stage model asks for a rasterizer


def fallback_message(device: torch.device, exc: BaseException) -> str:
    """Why nvdiffrast is not used, and what to install or set so that it builds."""
    from renderers.raster.build_check import advice

    how = advice() or (
        "its build requirements (compiler, ninja, CUDA headers, diffrp-nvdiffrast) look present, "
        "so the error above is the cause; `magic3d info` lists them."
    )
    return (f"nvdiffrast unavailable on {device} ({type(exc).__name__}: {exc}); falling back to the slower "
            f"PyTorch rasterizer. {how}")


def warn_fallback_once(device: torch.device, exc: BaseException) -> None:
    global _fallback_warned
    if _fallback_warned:
        return
    _fallback_warned = True
    warnings.warn(fallback_message(device, exc), stacklevel=3)


__all__ = ["Rasterizer", "TorchRasterizer", "get_rasterizer"]
