"""The amortized texture stage: one text-conditioned colour correction over every prompt's mesh.

LATTE3D's second stage refines an amortized model on surface renders. Here the surfaces stay as
the coarse field gives them (``magic3d.stages.fine.extract_mesh``: what generation exports) and
only their colour is trained: a volume render's diffuse shading uses normals of a haze that point
every way, so the coarse albedo comes out too bright (an orange that reads yellow), while the
rasterized mesh is lit as the prior's training images were. The correction is a residual on the
coarse albedo's logits, FiLM-modulated by the prompt as the coarse field is and zero at the
start, so an untrained stage changes nothing; generation evaluates it where it bakes colour.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from magic3d.amortize.config import AmortizedConfig, TextureStageConfig
from magic3d.amortize.field import BoundField, ConditionedField, film_mapping
from magic3d.amortize.model import averaged, load_weights
from magic3d.config_sections import FineConfig
from magic3d.errors import RunError
from magic3d.fields.encoding import grid_encoding
from magic3d.guidance.base import Prior
from magic3d.stages.fine import FineModel, FineResult, extract_mesh
from magic3d.stages.losses import SDSLoss


class ConditionedTexture(nn.Module):
    """``(points "N 3", prompt) -> albedo "N 3"``: the coarse albedo with a prompt-modulated residual."""

    def __init__(self, cfg: TextureStageConfig, conditioned: ConditionedField, device: torch.device | str) -> None:
        super().__init__()
        self.cfg, self.bound = cfg, conditioned.cfg.bound
        self.encoding = grid_encoding("dense", cfg.levels, cfg.features_per_level, 0, cfg.min_res, cfg.max_res, device)
        width = cfg.levels * cfg.features_per_level
        self.mlp = nn.Sequential(nn.Linear(width, cfg.hidden, device=device), nn.ReLU(),
                                 nn.Linear(cfg.hidden, 3, device=device))
        nn.init.zeros_(self.mlp[2].weight)  # zero residual: the coarse albedo until trained
        nn.init.zeros_(self.mlp[2].bias)
        self.mapping = film_mapping(conditioned.text_dim, conditioned.mapping[0].out_features,
                                    2 * (width + cfg.hidden), device)

    def modulation(self, conditioned: ConditionedField, text: Float[Tensor, " D"]) -> Float[Tensor, " M"]:
        return self.mapping(conditioned.text_input(text.reshape(1, -1)))[0]

    def albedo(self, field: BoundField, mod: Float[Tensor, " M"], points: Float[Tensor, "N 3"]) -> Float[Tensor, "N 3"]:
        width, hidden = self.mlp[0].in_features, self.cfg.hidden
        scale0, shift0, scale1, shift1 = mod.split([width, width, hidden, hidden])
        unit = ((points / self.bound) + 1.0) * 0.5
        feats = self.encoding(unit.clamp(0.0, 1.0)) * (1.0 + scale0) + shift0
        residual = self.mlp[2](F.relu(self.mlp[0](feats) * (1.0 + scale1) + shift1))
        with torch.no_grad():  # the coarse field is fixed in this stage
            base = field.albedo(points).float().clamp(1e-3, 1.0 - 1e-3)
        return torch.sigmoid(torch.logit(base) + residual)

    def colour_fn(self, conditioned: ConditionedField, field: BoundField,
                  text: Float[Tensor, " D"]) -> Callable[[Tensor], Tensor]:
        """What bake samples: the corrected albedo of one prompt, without gradients."""
        with torch.no_grad():
            mod = self.modulation(conditioned, text)

        def colour(points: Tensor) -> Tensor:
            with torch.no_grad():
                return self.albedo(field, mod, points)

        return colour


class TextureStageModel(FineModel):
    """The fine stage's renders, shading and SDS (``FineModel``) over each prompt's fixed mesh in turn,
    the prompts drawn as the coarse stage draws them (``AmortizedModel.batch_indices``)."""

    def __init__(self, cfg: AmortizedConfig, prior: Prior | None, amortized, device: torch.device) -> None:
        stage = cfg.amortize.texture
        fine = dataclasses.replace(cfg.run.fine, shading=tuple(stage.shading), normal_consistency_weight=0.0,
                                   laplacian_weight=0.0)
        super().__init__(fine, loss_fn=None, device=device)  # type: ignore[arg-type]
        self.stage, self.prior, self.amortized = stage, prior, amortized
        self.conditioned: ConditionedField = amortized.conditioned
        self.net = ConditionedTexture(stage, self.conditioned, device)
        self.meshes: list[tuple[Tensor, Tensor]] = []
        self._index = 0

    def extract_meshes(self) -> None:
        """Every prompt's surface as generation extracts it (kept fixed through this stage)."""
        self.meshes = []
        for text, cond in zip(self.amortized.prompts.texts, self.amortized.conditioning, strict=True):
            with torch.no_grad():
                field = self.conditioned.at(cond).eval()
            try:
                result = extract_mesh(field, self.cfg, self.device)
            except RunError as exc:
                raise RunError(f"The amortized model has no surface for {text!r} to texture: {exc}") from None
            self.meshes.append((result.vertices, result.faces))

    def bind(self, index: int) -> None:
        self._index = index
        with torch.no_grad():  # the coarse model is fixed here: no graph back to its mapping
            field = self.conditioned.at(self.amortized.conditioning[index])
        mod = self.net.modulation(self.conditioned, self.amortized.conditioning[index])
        self.texture = lambda points: self.net.albedo(field, mod, points)  # FineModel.render's albedo_fn
        if self.prior is not None and self.amortized.prompts.views is not None:
            self.loss_fn = SDSLoss(self.prior, self.amortized.prompts.views[index], self.cfg.sds)

    def mesh(self) -> tuple[Tensor, Tensor]:
        return self.meshes[self._index]

    def param_groups(self) -> list[dict]:
        return [{"params": list(self.net.encoding.parameters()), "lr": self.stage.lr},
                {"params": list(self.net.mlp.parameters()), "lr": self.stage.lr * 0.1},
                {"params": list(self.net.mapping.parameters()), "lr": self.stage.lr * 0.1}]

    def state_tensors(self) -> dict[str, Tensor]:
        return {f"texture/{k}": v for k, v in self.net.state_dict().items()}

    def load_state_tensors(self, tensors: dict[str, Tensor]) -> None:
        load_weights(self.net, tensors, "texture/", "amortized texture")

    def step(self, step: int, ratio: float, generator: torch.Generator) -> tuple[Tensor, dict[str, Tensor | float]]:
        drawn = self.amortized.batch_indices(step, self.stage.prompts_per_step)
        return averaged(drawn, self.bind, lambda: super(TextureStageModel, self).step(step, ratio, generator))

    @torch.no_grad()
    def preview(self) -> np.ndarray:
        self.bind(0)
        return super().preview()


def model_surface(model, field: BoundField, text: Float[Tensor, " D"], cfg: FineConfig,
                  device: torch.device | str) -> FineResult:
    """The mesh generation exports for one conditioning ``text`` (``field`` being the model bound to
    it): extracted from the coarse field, coloured by the texture stage when the model has one."""
    result = extract_mesh(field, cfg, device)
    net: ConditionedTexture | None = getattr(model, "texture_net", None)
    if net is None:
        return result
    return dataclasses.replace(result, color_fn=net.colour_fn(model.conditioned, field, text))
