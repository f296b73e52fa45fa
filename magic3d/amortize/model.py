"""What the one loop optimises when amortizing: the conditioned field over a set of prompts.

``AmortizedModel`` is the coarse stage's model (``CoarseModel``: cameras, shading, renderer,
regularisers) with one field per prompt bound in turn: each step draws ``prompts_per_step``
prompts in a seeded order that covers the whole set every epoch, renders each with its own
conditioning and scores it with its own view-dependent embeddings, and averages their losses.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from magic3d.amortize.config import AmortizedConfig
from magic3d.amortize.field import ConditionedField, pooled
from magic3d.errors import RunError
from magic3d.guidance.base import Prior
from magic3d.prompts import ViewPrompts, encode_cached
from magic3d.stages.coarse import CoarseModel
from magic3d.stages.losses import SDSLoss


@dataclass
class PromptSet:
    texts: list[str]
    conditioning: Float[Tensor, "P D"]  # pooled text embeddings: the field's input
    views: list[ViewPrompts] | None = None  # what SDS scores each prompt's renders with (training only)

    @classmethod
    def build(cls, texts: list[str], prior: Prior, cfg: AmortizedConfig, cache_dir: Path | None) -> PromptSet:
        return cls(texts, encode_conditioning(texts, prior, cfg, cache_dir),
                   [ViewPrompts.build(t, prior, cfg.run.prior, cache_dir) for t in texts])


def encode_conditioning(texts: list[str], prior: Prior, cfg: AmortizedConfig,
                        cache_dir: Path | None) -> Float[Tensor, "P D"]:
    """Each prompt's own embedding (no view words), pooled to one vector."""
    encoded = encode_cached(prior, texts, cfg.run.prior.negative_prompt, cache_dir)
    return torch.cat([pooled(encoded[t].cond) for t in texts])


def load_weights(module: torch.nn.Module, tensors: dict[str, Tensor], prefix: str, what: str) -> None:
    """Copy ``module``'s state from ``tensors`` (its keys under ``prefix``), refusing a checkpoint of another shape."""
    own = module.state_dict()
    bad = [k for k, v in own.items() if f"{prefix}{k}" not in tensors or tensors[f"{prefix}{k}"].shape != v.shape]
    if bad:
        raise RunError(f"The {what}'s weights do not fit its config (first mismatch: {bad[0]!r}); "
                       "train it again: magic3d amortize PROMPTS --out MODEL_DIR --restart.")
    with torch.no_grad():
        for k, v in own.items():
            v.copy_(tensors[f"{prefix}{k}"])


def averaged(indices: list[int], bind: Callable[[int], None],
             one: Callable[[], tuple[Tensor, dict]]) -> tuple[Tensor, dict[str, Tensor | float]]:
    """The mean loss and metrics of ``one()`` with each prompt of ``indices`` bound in turn."""
    losses, sums = [], {}
    for index in indices:
        bind(index)
        loss, metrics = one()
        losses.append(loss)
        for key, value in metrics.items():
            sums[key] = sums.get(key, 0.0) + value
    return torch.stack(losses).mean(), {key: value / len(indices) for key, value in sums.items()}


class AmortizedModel(CoarseModel):
    def __init__(self, cfg: AmortizedConfig, prior: Prior | None, prompts: PromptSet, device: torch.device,
                 seed: int) -> None:
        super().__init__(cfg.run.coarse, loss_fn=None, device=device)  # type: ignore[arg-type]
        self.amortized, self.prior, self.prompts, self.seed = cfg, prior, prompts, seed
        self.conditioning = prompts.conditioning.to(device)
        self.conditioned = ConditionedField(self.field, cfg.amortize.mapping, self.conditioning.shape[1], device,
                                            table=self.conditioning)
        self.bind(0)
        self._drawn: list[int] = []
        self.texture_net = None  # the texture stage's ConditionedTexture, once generation loads one

    def bind(self, index: int) -> None:
        """Point the coarse model's renders (``self.field``) and loss at prompt ``index``."""
        self.field = self.conditioned.at(self.conditioning[index])
        if self.prompts.views is not None and self.prior is not None:
            self.loss_fn = SDSLoss(self.prior, self.prompts.views[index], self.cfg.sds)

    def batch_indices(self, step: int, per_step: int | None = None) -> list[int]:
        """The prompts of ``step``: a seeded permutation per epoch, read ``per_step`` (default
        ``prompts_per_step``) at a time, so a resumed run draws exactly what an uninterrupted one would."""
        count, k = len(self.prompts.texts), per_step or self.amortized.amortize.prompts_per_step
        out = []
        for n in range(step * k, step * k + k):
            epoch, position = divmod(n, count)
            order = torch.randperm(count, generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))
            out.append(int(order[position]))
        return out

    def param_groups(self) -> list[dict]:
        base, lr = self.conditioned.base, self.cfg.lr
        return [{"params": list(base.encoding.parameters()), "lr": lr},
                {"params": list(base.mlp.parameters()) + list(base.background_mlp.parameters()),
                 "lr": lr * self.cfg.mlp_lr_scale},
                {"params": list(self.conditioned.mapping.parameters()),
                 "lr": lr * self.amortized.amortize.mapping.lr_scale}]

    def state_tensors(self) -> dict[str, Tensor]:
        tensors = {f"field/{k}": v for k, v in self.conditioned.state_dict().items()}
        tensors["occupancy/density"] = self.occupancy.state()
        return tensors

    def load_state_tensors(self, tensors: dict[str, Tensor]) -> None:
        load_weights(self.conditioned, tensors, "field/", "amortized model")
        if "occupancy/density" in tensors:
            self.occupancy.load(tensors["occupancy/density"])

    def step(self, step: int, ratio: float, generator: torch.Generator) -> tuple[Tensor, dict[str, Tensor | float]]:
        self._drawn = self.batch_indices(step)
        return averaged(self._drawn, self.bind, lambda: super(AmortizedModel, self).step(step, ratio, generator))

    def after_step(self, step: int, generator: torch.Generator) -> None:
        every = self.cfg.occupancy_every
        if not every or (step + 1) % every:
            return
        # One grid for every prompt: it keeps the decayed maximum over the prompts it is shown,
        # so with prompts cycling each one's cells stay occupied between its turns.
        with torch.no_grad():
            bound = [self.conditioned.at(self.conditioning[i]) for i in self._drawn or [0]]
            self.occupancy.update(lambda p: torch.stack([b.density(p) for b in bound]).amax(0), generator, self.device)

    @torch.no_grad()
    def preview(self) -> np.ndarray:
        self.bind(0)
        return super().preview()
