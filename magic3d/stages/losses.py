"""Stage losses. Every stage loss maps renders to (loss, metrics); SDS is the one real runs use.

A stage calls ``loss_fn(rgb, cameras, step_ratio, generator, shading=mode)``; ``shading`` names
how the views were lit ("albedo", "diffuse", "textureless"), which SDS uses to pick the prompt.

The fitting tests pass an image loss through the same stage loops, which is how they prove
that field, renderer and optimiser can make a shape with only the loss swapped.

``scheduled_weight`` gives a stage's regulariser weight at a step from (step, weight) points.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from magic3d.guidance.base import Prior, SDSConfig
from magic3d.prompts import ViewPrompts
from renderers.cameras import Cameras


class SDSLoss:
    """Score distillation from ``prior`` with one prompt embedding per camera's view bucket."""

    def __init__(self, prior: Prior, view_prompts: ViewPrompts, sds_cfg: SDSConfig) -> None:
        self.prior, self.view_prompts, self.cfg = prior, view_prompts, sds_cfg

    def __call__(
        self, rgb: Float[Tensor, "B H W 3"], cameras: Cameras, step_ratio: float,
        generator: torch.Generator | None = None, shading: str = "albedo",
    ) -> tuple[Tensor, dict[str, Tensor | float]]:
        # The prior keeps its own precision (prior.dtype): the fields' autocast stops here, or
        # an fp16 UNet would be recast to bf16 on every call.
        with torch.autocast(rgb.device.type, enabled=False):
            images = to_prior_images(rgb.float(), int(self.prior.resolution))
            embeddings = self.view_prompts.for_cameras(cameras, shading)
            out = self.prior.sds(images, embeddings, step_ratio, self.cfg, generator)
        # Tensors, not floats: the loop reads every metric in one host sync per step.
        metrics = {"sds": out.loss.detach(), "t": out.t.float().mean(), "grad_norm": out.grad_norm}
        return out.loss, metrics


def to_prior_images(rgb: Float[Tensor, "B H W 3"], resolution: int) -> Float[Tensor, "B 3 R R"]:
    """Channels-first renders at the prior's side length (bilinear both ways, differentiable)."""
    images = rgb.permute(0, 3, 1, 2)
    if images.shape[-2:] != (resolution, resolution):
        images = F.interpolate(images, size=(resolution, resolution), mode="bilinear", align_corners=False)
    return images


def scheduled_weight(points: Sequence[tuple[float, float]], step: int, constant: float) -> float:
    """A regulariser's weight at ``step`` from (step, weight) ``points``: linear in between, flat
    before the first and after the last; ``constant`` when there are no points."""
    if not points:
        return constant
    (s0, w0), rest = points[0], points[1:]
    if step <= s0:
        return float(w0)
    for s1, w1 in rest:
        if step <= s1:
            return float(w0 + (w1 - w0) * (step - s0) / (s1 - s0)) if s1 > s0 else float(w1)
        s0, w0 = s1, w1
    return float(w0)
