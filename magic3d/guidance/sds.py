"""Score distillation maths shared by every prior (latent, pixel and built-in).

SDS gradient on the model input x (latents or pixels): ``w(t) * (eps_hat - eps)``. It is
applied with a stop-gradient target, ``loss = 0.5 * ||x - sg(x - grad)||^2``, whose gradient
with respect to x is exactly ``grad`` and whose value (``0.5 * ||grad||^2``) is worth logging.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from magic3d.guidance.base import SDSConfig, Weighting


def timestep_range(step_ratio: float, cfg: SDSConfig) -> tuple[float, float]:
    """[t_min, t_max] as fractions of the schedule, t_max annealed linearly to t_max_end."""
    t_max = cfg.t_max
    if cfg.t_max_end is not None:
        ratio = min(max(step_ratio, 0.0), 1.0)
        t_max = cfg.t_max + (cfg.t_max_end - cfg.t_max) * ratio
    return cfg.t_min, max(t_max, cfg.t_min)


def sample_timesteps(
    batch: int, step_ratio: float, cfg: SDSConfig, num_train_timesteps: int,
    generator: torch.Generator | None = None, device: torch.device | str = "cpu",
) -> Tensor:
    """Integer timesteps "B", uniform in the (annealed) range."""
    lo, hi = timestep_range(step_ratio, cfg)
    lo_i = int(round(lo * (num_train_timesteps - 1)))
    hi_i = max(int(round(hi * (num_train_timesteps - 1))), lo_i)
    t = torch.randint(lo_i, hi_i + 1, (batch,), generator=generator)
    return t.to(device)


def sds_weight(alphas_cumprod: Float[Tensor, " T"], t: Tensor, weighting: Weighting) -> Float[Tensor, " B"]:
    """w(t): ``uniform`` 1; ``sds`` 1 - alpha_bar_t (DreamFusion's paper choice);
    ``dreamfusion`` sqrt(alpha_bar_t) * (1 - alpha_bar_t), the weighting of its public code."""
    a = alphas_cumprod.to(t.device)[t].float()
    if weighting == "uniform":
        return torch.ones_like(a)
    if weighting == "sds":
        return 1.0 - a
    if weighting == "dreamfusion":
        return a.sqrt() * (1.0 - a)
    raise ValueError(f"unknown SDS weighting {weighting!r}")


def guided_noise(
    eps_uncond: Tensor, eps_cond: Tensor, scale: float,
    eps_neg: Tensor | None = None, neg_weights: Tensor | None = None,
) -> Tensor:
    """Classifier-free guidance; with negative views, Perp-Neg's perpendicular correction.

    Perp-Neg removes from each negative view's guidance its component along the positive
    guidance, then subtracts what is left: it pushes away from "back view" features without
    cancelling what the prompt itself asks for.
    """
    delta = eps_cond - eps_uncond
    if eps_neg is None:
        return eps_uncond + scale * delta
    # eps_neg "B K C H W", neg_weights "B K"
    flat = delta.flatten(1)
    total = torch.zeros_like(delta)
    for k in range(eps_neg.shape[1]):
        d_neg = (eps_neg[:, k] - eps_uncond).flatten(1)
        along = (d_neg * flat).sum(-1, keepdim=True) / (flat * flat).sum(-1, keepdim=True).clamp(min=1e-12)
        perp = (d_neg - along * flat).view_as(delta)
        total = total + neg_weights[:, k].view(-1, *([1] * (delta.dim() - 1))) * perp
    return eps_uncond + scale * (delta - total)


def sds_loss(
    x: Float[Tensor, "B C H W"], grad: Float[Tensor, "B C H W"], grad_clip: float | None = None
) -> tuple[Tensor, float]:
    """Loss whose gradient w.r.t. ``x`` is exactly ``grad``; also returns the mean per-image grad norm."""
    grad = torch.nan_to_num(grad.detach().float())
    if grad_clip is not None:
        grad = grad.clamp(-grad_clip, grad_clip)
    target = (x.float() - grad).detach()
    loss = 0.5 * ((x.float() - target) ** 2).sum()
    return loss, float(grad.norm() / max(x.shape[0], 1) ** 0.5)
