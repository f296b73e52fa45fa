"""The coarse field: a multi-resolution grid encoding with small MLPs for density and albedo.

The encoding is Instant-NGP's hash grid (nerfstudio's), as in the paper, or for CPU presets a
dense multi-resolution grid (``encoding: dense``, see magic3d.fields.encoding).

Magic3D adds a density blob at the centre at initialisation so that SDS starts from a solid
object instead of empty space; the background is a small MLP of the view direction.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from magic3d.config_sections import FieldConfig
from magic3d.fields.encoding import grid_encoding


class NeRFField(nn.Module):
    def __init__(self, cfg: FieldConfig, device: torch.device | str = "cpu") -> None:
        super().__init__()
        self.cfg = cfg
        self.encoding = grid_encoding(cfg.encoding, cfg.levels, cfg.features_per_level, cfg.log2_hashmap_size,
                                      cfg.min_res, cfg.max_res, device)
        dim = cfg.levels * cfg.features_per_level
        self.mlp = nn.Sequential(nn.Linear(dim, cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, 4))
        self.background_mlp = nn.Sequential(nn.Linear(3, 32), nn.ReLU(), nn.Linear(32, 3))

    def _features(self, points: Float[Tensor, "N 3"]) -> Float[Tensor, "N 4"]:
        unit = ((points / self.cfg.bound) + 1.0) * 0.5
        features = self.encoding(unit.clamp(0.0, 1.0))
        # tiny-cuda-nn's grid answers in fp16; the MLP's weights decide (autocast still applies).
        return self.mlp(features.to(self.mlp[0].weight.dtype))

    def blob(self, points: Float[Tensor, "N 3"]) -> Float[Tensor, " N"]:
        r2 = (points * points).sum(-1)
        if self.cfg.blob == "gaussian":
            return self.cfg.blob_density * torch.exp(-r2 / (2.0 * self.cfg.blob_radius**2))
        return self.cfg.blob_density * (1.0 - torch.sqrt(r2 + 1e-12) / self.cfg.blob_radius)

    def density(self, points: Float[Tensor, "N 3"]) -> Float[Tensor, " N"]:
        raw = self._features(points)[:, 0]
        return F.softplus(raw + self.blob(points) + self.cfg.density_bias)

    def albedo(self, points: Float[Tensor, "N 3"]) -> Float[Tensor, "N 3"]:
        return torch.sigmoid(self._features(points)[:, 1:])

    def density_and_albedo(self, points: Float[Tensor, "N 3"]) -> tuple[Tensor, Tensor]:
        out = self._features(points)
        return F.softplus(out[:, 0] + self.blob(points) + self.cfg.density_bias), torch.sigmoid(out[:, 1:])

    def background(self, dirs: Float[Tensor, "R 3"]) -> Float[Tensor, "R 3"]:
        if self.cfg.background == "white":
            return torch.ones_like(dirs)
        return torch.sigmoid(self.background_mlp(dirs))
