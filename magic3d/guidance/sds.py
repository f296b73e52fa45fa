"""Score distillation maths shared by every prior (latent, pixel and built-in).

SDS gradient on the model input x (latents or pixels): ``w(t) * (eps_hat - eps)``. It is
applied with a stop-gradient target, ``loss = 0.5 * ||x - sg(x - grad)||^2``, whose gradient
with respect to x is exactly ``grad`` and whose value (``0.5 * ||grad||^2``) is worth logging.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from magic3d.config_sections import SDSConfig, Weighting


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
    t = torch.randint(lo_i, hi_i + 1, (batch,), generator=generator, device=_gen_device(generator))
    return t.to(device)


def sample_noise(
    shape: torch.Size | tuple[int, ...], generator: torch.Generator | None, like: Tensor
) -> Tensor:
    """Standard normal noise drawn on the generator's device (so CPU seeds replay on CUDA runs)."""
    return torch.randn(shape, generator=generator, device=_gen_device(generator)).to(like.device, torch.float32)


def _gen_device(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def sds_weight(alphas_cumprod: Float[Tensor, " T"], t: Tensor, weighting: Weighting) -> Float[Tensor, " B"]:
    """w(t) for the SDS gradient ``w(t) * (eps_hat - eps)``.

    ``uniform``: 1. ``sds``: sigma_t^2 = 1 - alpha_bar_t, DreamFusion's stated w(t).
    ``dreamfusion``: alpha_t * sigma_t^2 = sqrt(alpha_bar_t) * (1 - alpha_bar_t): the same
    sigma^2 weighting with the chain-rule factor dz_t/dx = alpha_t that DreamFusion's derivation
    (eq. 3) folds into w(t) kept explicit; it damps the noisiest timesteps further.
    """
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
    # eps_neg "B K C H W", neg_weights "B K" (ones when not given)
    if neg_weights is None:
        neg_weights = torch.ones(eps_neg.shape[:2], dtype=delta.dtype, device=delta.device)
    flat = delta.flatten(1)
    total = torch.zeros_like(delta)
    for k in range(eps_neg.shape[1]):
        d_neg = (eps_neg[:, k] - eps_uncond).flatten(1)
        along = (d_neg * flat).sum(-1, keepdim=True) / (flat * flat).sum(-1, keepdim=True).clamp(min=1e-12)
        perp = (d_neg - along * flat).view_as(delta)
        total = total + neg_weights[:, k].to(delta).view(-1, *([1] * (delta.dim() - 1))) * perp
    return eps_uncond + scale * (delta - total)


class _SDSTarget(torch.autograd.Function):
    """Value 0.5 * ||g||^2 (what ``0.5 * ||x - sg(x - g)||^2`` equals), gradient exactly ``g``.

    Writing the stop-gradient target as a function rather than ``x - (x - g)`` keeps the
    gradient bit-exact: the subtraction would round g to the precision of x's magnitude.
    """

    @staticmethod
    def forward(ctx, x: Tensor, grad: Tensor) -> Tensor:  # noqa: ANN001
        ctx.save_for_backward(grad)
        ctx.x_dtype = x.dtype
        return 0.5 * (grad * grad).sum()

    @staticmethod
    def backward(ctx, out_grad: Tensor) -> tuple[Tensor, None]:  # noqa: ANN001
        (grad,) = ctx.saved_tensors
        return (grad * out_grad).to(ctx.x_dtype), None


def sds_loss(
    x: Float[Tensor, "B C H W"], grad: Float[Tensor, "B C H W"], grad_clip: float | None = None
) -> tuple[Tensor, Float[Tensor, ""]]:
    """Loss whose gradient w.r.t. ``x`` is exactly ``grad`` (after optional element-wise clipping).

    The value, 0.5 * ||grad||^2, is the stop-gradient target loss ``0.5 * ||x - sg(x - grad)||^2``:
    worth logging, it shrinks as the renders approach what the prior predicts. Non-finite
    entries of ``grad`` become 0 so one bad pixel cannot poison the parameters. Also returns
    the root-mean-square over the batch of the per-image gradient norms.
    """
    if x.shape != grad.shape:
        raise ValueError(f"SDS gradient shape {tuple(grad.shape)} does not match its input {tuple(x.shape)}")
    grad = torch.nan_to_num(grad.detach().float(), nan=0.0, posinf=0.0, neginf=0.0)
    if grad_clip is not None:
        grad = grad.clamp(-grad_clip, grad_clip)
    loss = _SDSTarget.apply(x, grad.to(x.device))
    return loss, grad.norm().detach() / max(x.shape[0], 1) ** 0.5  # a tensor: read with the loss, once
