"""The text-conditioned coarse field: one spatial encoding for every prompt, modulated per prompt.

ATT3D's recipe: a mapping network turns the prompt's text embedding into FiLM modulations
(a scale and a shift per channel) of the grid features and of the MLP's hidden layer, so the
grid is a basis every prompt shares and the prompt picks its shape and colour out of it. The
encoding, the MLP and the background are the coarse field's own (``NeRFField``); binding a
conditioning (``at``) gives an object with ``NeRFField``'s interface, which the renderer, mesh
extraction and baking take unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from magic3d.amortize.config import MappingConfig
from magic3d.config_sections import FieldConfig
from magic3d.fields.nerf import NeRFField


def pooled(cond: Tensor) -> Float[Tensor, "B D"]:
    """One vector per prompt from any prior's embedding ("B D" as is, "B T D" averaged over tokens)."""
    return cond.float().flatten(1, -2).mean(1) if cond.dim() > 2 else cond.float()


def whitening(table: Float[Tensor, "P D"], floor: float = 1e-2) -> tuple[Float[Tensor, " D"], Float[Tensor, "D D"]]:
    """(mean, ZCA matrix) that give ``table``'s rows zero mean and unit variance along each principal
    direction. Directions with less than ``floor`` of the largest variance are scaled as if they had
    that much, so noise is not blown up into signal; a held-out prompt goes through the same map."""
    table = table.float()
    mean = table.mean(0)
    centred = table - mean
    _, sv, vh = torch.linalg.svd(centred, full_matrices=False)  # vh: "K D"
    var = sv.square() / max(table.shape[0] - 1, 1)
    top = float(var.max())  # one read, at set-up
    scale = var.clamp(min=top * floor).rsqrt() if top > 0 else torch.ones_like(var)  # a lone prompt: nothing to scale
    return mean, vh.T @ torch.diag(scale) @ vh


def film_mapping(text_dim: int, hidden: int, out: int, device: torch.device | str) -> nn.Sequential:
    """The mapping network from a text vector to ``out`` FiLM values, its last layer zero: no modulation at the start."""
    mapping = nn.Sequential(nn.Linear(text_dim, hidden, device=device), nn.SiLU(),
                            nn.Linear(hidden, hidden, device=device), nn.SiLU(), nn.Linear(hidden, out, device=device))
    nn.init.zeros_(mapping[-1].weight)
    nn.init.zeros_(mapping[-1].bias)
    return mapping


class ConditionedField(nn.Module):
    def __init__(self, base: NeRFField, mapping: MappingConfig, text_dim: int,
                 device: torch.device | str = "cpu", table: Float[Tensor, "P D"] | None = None) -> None:
        super().__init__()
        self.whiten = mapping.whiten
        if self.whiten:  # fixed from the training set's table; saved with the weights as buffers
            mean, matrix = whitening(table if table is not None else torch.zeros(1, text_dim, device=device))
            self.register_buffer("text_mean", mean.to(device))
            self.register_buffer("text_whiten", matrix.to(device))
        self.base = base
        self.cfg: FieldConfig = base.cfg
        self.feature_dim = self.base.mlp[0].in_features
        self.hidden_dim = self.base.mlp[0].out_features
        out = 2 * (self.feature_dim + self.hidden_dim)
        # Zero modulations at the start: every prompt begins as the plain coarse field (blob included).
        self.mapping = film_mapping(text_dim, mapping.hidden, out, device)
        self.text_dim = text_dim

    def text_input(self, text: Float[Tensor, "B D"]) -> Float[Tensor, "B D"]:
        """What a mapping network reads: the text vector, whitened when the model whitens."""
        text = text.to(self.mapping[0].weight.dtype)
        return (text - self.text_mean) @ self.text_whiten if self.whiten else text

    def modulation(self, text: Float[Tensor, "B D"]) -> Float[Tensor, "B M"]:
        return self.mapping(self.text_input(text))

    def at(self, text: Float[Tensor, "1 D"] | Float[Tensor, " D"]) -> BoundField:
        """The field for one prompt's (pooled) embedding."""
        return BoundField(self, self.modulation(text.reshape(1, -1))[0])


class BoundField:
    """``NeRFField``'s interface for one conditioning: what renderers, extraction and baking call."""

    def __init__(self, owner: ConditionedField, mod: Float[Tensor, " M"]) -> None:
        self.owner, self.cfg = owner, owner.cfg
        f, h = owner.feature_dim, owner.hidden_dim
        self.scale0, self.shift0, self.scale1, self.shift1 = mod.split([f, f, h, h])

    def _features(self, points: Float[Tensor, "N 3"]) -> Float[Tensor, "N 4"]:
        base = self.owner.base
        unit = ((points / self.cfg.bound) + 1.0) * 0.5
        feats = base.encoding(unit.clamp(0.0, 1.0)).to(base.mlp[0].weight.dtype)
        feats = feats * (1.0 + self.scale0) + self.shift0
        hidden = F.relu(base.mlp[0](feats) * (1.0 + self.scale1) + self.shift1)
        return base.mlp[2](hidden)

    def density(self, points: Float[Tensor, "N 3"]) -> Float[Tensor, " N"]:
        raw = self._features(points)[:, 0]
        return F.softplus(raw + self.owner.base.blob(points) + self.cfg.density_bias)

    def albedo(self, points: Float[Tensor, "N 3"]) -> Float[Tensor, "N 3"]:
        return torch.sigmoid(self._features(points)[:, 1:])

    def density_and_albedo(self, points: Float[Tensor, "N 3"]) -> tuple[Tensor, Tensor]:
        out = self._features(points)
        return F.softplus(out[:, 0] + self.owner.base.blob(points) + self.cfg.density_bias), torch.sigmoid(out[:, 1:])

    def background(self, dirs: Float[Tensor, "R 3"]) -> Float[Tensor, "R 3"]:
        return self.owner.base.background(dirs)

    def eval(self) -> BoundField:
        self.owner.eval()
        return self
