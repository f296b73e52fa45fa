"""The CUDA backend: nvdiffrast (PyPI ``diffrp-nvdiffrast``, the ``gpu`` extra; compiled on first use).

Same contract as the PyTorch backend; triangle ids and barycentrics come straight from
``nvdiffrast.torch.rasterize``, whose output layout (u, v, z/w, id + 1) our CPU backend copies.
nvdiffrast wants float32 positions/attributes/textures and int32 contiguous indices on the
context's device, so every call converts (a no-op when the caller already complies; the casts
are differentiable). Import this module only through ``get_rasterizer``: importing it without
nvdiffrast raises ImportError.
"""

from __future__ import annotations

import nvdiffrast.torch as dr
import torch
from jaxtyping import Float, Int
from torch import Tensor


class NvdiffrastRasterizer:
    name = "nvdiffrast"

    def __init__(self, device: torch.device | str = "cuda") -> None:
        self.device = torch.device(device)
        if self.device.type != "cuda":
            raise ValueError(f"nvdiffrast needs a CUDA device, not {self.device}; use TorchRasterizer on CPU")
        self.context = dr.RasterizeCudaContext(device=self.device)

    def rasterize(
        self, clip_pos: Float[Tensor, "B V 4"], faces: Int[Tensor, "F 3"], resolution: tuple[int, int],
        cull_back: bool = False,
    ) -> Float[Tensor, "B H W 4"]:
        # cull_back is only a hint (see renderers.raster): nvdiffrast draws every triangle, fast enough.
        rast, _ = dr.rasterize(self.context, clip_pos.float().contiguous(), _tri(faces), tuple(resolution))
        return rast

    def interpolate(
        self, attr: Float[Tensor, "B V C"] | Float[Tensor, "V C"], rast: Float[Tensor, "B H W 4"],
        faces: Int[Tensor, "F 3"],
    ) -> Float[Tensor, "B H W C"]:
        out, _ = dr.interpolate(attr.float().contiguous(), rast, _tri(faces))
        return out

    def texture(
        self, tex: Float[Tensor, "B Ht Wt C"], uv: Float[Tensor, "B H W 2"], filter: str = "linear"
    ) -> Float[Tensor, "B H W C"]:
        if filter not in ("linear", "nearest"):
            raise ValueError(f"unknown texture filter {filter!r}; use 'linear' or 'nearest'")
        # nvdiffrast reads texture row 0 at v = 0; ours keep row 0 at the top (v = 1), so flip v.
        flipped = torch.stack([uv[..., 0], 1.0 - uv[..., 1]], dim=-1).float().contiguous()
        return dr.texture(tex.float().contiguous(), flipped, filter_mode=filter, boundary_mode="clamp")

    def antialias(
        self, color: Float[Tensor, "B H W C"], rast: Float[Tensor, "B H W 4"],
        clip_pos: Float[Tensor, "B V 4"], faces: Int[Tensor, "F 3"],
    ) -> Float[Tensor, "B H W C"]:
        return dr.antialias(color.float().contiguous(), rast, clip_pos.float().contiguous(), _tri(faces))


def _tri(faces: Tensor) -> Tensor:
    return faces.to(torch.int32).contiguous()
