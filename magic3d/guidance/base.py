"""The contract every prior meets. Stages see only this: ``encode_prompt`` and ``sds``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from jaxtyping import Float
from torch import Tensor

from magic3d.config_sections import SDSConfig


@dataclass
class TextEmbeddings:
    """Conditional and unconditional embeddings, one row per image of the batch.

    Shapes are the model's own ("B 77 1024" for SD 2.x, "B 77 4096" for IF, "B D" for the
    built-in prior); stages never look inside. ``negative_views`` carries Perp-Neg's extra
    conditions ("B K ..." with weights "B K") when that option is on. ``cameras`` holds each
    row's (elevation, azimuth) in degrees for priors conditioned on the camera; others ignore it.
    """

    cond: Tensor
    uncond: Tensor
    negative_views: Tensor | None = None
    negative_weights: Float[Tensor, "B K"] | None = None
    cameras: Float[Tensor, "B 2"] | None = None

    def __len__(self) -> int:
        return self.cond.shape[0]


@dataclass
class SDSOutput:
    loss: Float[Tensor, ""]  # backward() gives exactly w(t) * (eps_hat - eps) on the prior's input
    t: Tensor  # integer timesteps used, "B"
    grad_norm: Float[Tensor, ""] | float  # a device scalar: the loop reads it with the loss


class Prior(Protocol):
    name: str
    resolution: int  # side of the square images the model sees (renders are resized to it)
    device: torch.device

    def encode_prompt(self, prompts: list[str], negative_prompts: list[str]) -> TextEmbeddings:
        """Embeddings for each prompt; ``negative_prompts`` gives each row's unconditional text."""
        ...

    def sds(
        self,
        images: Float[Tensor, "B 3 H W"],
        embeddings: TextEmbeddings,
        step_ratio: float,
        cfg: SDSConfig,
        generator: torch.Generator | None = None,
    ) -> SDSOutput:
        """Score distillation loss for renders in [0, 1]; ``step_ratio`` in [0, 1] drives annealing."""
        ...
