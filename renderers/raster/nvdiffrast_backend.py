"""The CUDA backend: nvdiffrast (PyPI ``diffrp-nvdiffrast``, compiled on first use).

Same contract as the PyTorch backend; triangle ids and barycentrics come straight from
``nvdiffrast.torch.rasterize``, whose output layout (u, v, z/w, id + 1) our CPU backend copies.
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
        self.context = dr.RasterizeCudaContext(device=self.device)

    def rasterize(
        self, clip_pos: Float[Tensor, "B V 4"], faces: Int[Tensor, "F 3"], resolution: tuple[int, int]
    ) -> Float[Tensor, "B H W 4"]:
        rast, _ = dr.rasterize(self.context, clip_pos.contiguous().float(), faces.int().contiguous(), resolution)
        return rast

    def interpolate(self, attr: Tensor, rast: Float[Tensor, "B H W 4"], faces: Int[Tensor, "F 3"]) -> Tensor:
        out, _ = dr.interpolate(attr.contiguous().float(), rast, faces.int().contiguous())
        return out

    def texture(self, tex: Tensor, uv: Float[Tensor, "B H W 2"], filter: str = "linear") -> Tensor:
        # nvdiffrast reads row 0 at v = 0; our textures keep row 0 at the top, so flip v.
        flipped = torch.stack([uv[..., 0], 1.0 - uv[..., 1]], dim=-1)
        return dr.texture(tex.contiguous(), flipped.contiguous(), filter_mode=filter, boundary_mode="clamp")

    def antialias(self, color: Tensor, rast: Tensor, clip_pos: Tensor, faces: Int[Tensor, "F 3"]) -> Tensor:
        return dr.antialias(color.contiguous(), rast, clip_pos.contiguous().float(), faces.int().contiguous())
