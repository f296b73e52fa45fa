"""One rasterizer interface (nvdiffrast's), two backends: nvdiffrast on CUDA, ours in PyTorch on CPU.

``rasterize(clip_pos "B V 4", faces "F 3", (H, W)) -> rast "B H W 4"`` holds (u, v, z/w, triangle id + 1)
per pixel, 0 in the last channel where no triangle covers it; ``u, v`` are the perspective-correct
barycentric weights of the triangle's first two vertices. Row 0 of every image is NDC y = -1.
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
        self, clip_pos: Float[Tensor, "B V 4"], faces: Int[Tensor, "F 3"], resolution: tuple[int, int]
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
        warnings.warn(
            f"nvdiffrast unavailable on {device} ({type(exc).__name__}: {exc}); falling back to the slower PyTorch "
            "rasterizer. Install the gpu extra (pip install diffrp-nvdiffrast) for the CUDA backend.",
            stacklevel=2,
        )
        return TorchRasterizer()


__all__ = ["Rasterizer", "TorchRasterizer", "get_rasterizer"]
