"""The built-in prior: a small pixel-space diffusion model shipped in the package (offline, CPU).

It knows a closed world (``VOCABULARY``: kinds, colours, sizes, view words) and nothing else;
prompts outside it are refused before any work with the list of words it knows.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from magic3d.errors import PriorError
from magic3d.guidance.base import SDSConfig, SDSOutput, TextEmbeddings
from magic3d.guidance.builtin_model import RESOLUTION, load_camera_encoder, load_text_encoder
from magic3d.guidance.builtin_words import (
    VOCABULARY,
    WEIGHTS_DIR,
    validate_prompt,
    weights_available,
)
from magic3d.guidance.builtin_world import COLOURS, ORBIT
from magic3d.guidance.sds import guided_noise, sample_timesteps, sds_loss, sds_weight
from renderers.cameras import OrbitRange

# The training cameras stay below 50 degrees of elevation, so "overhead" never appeared in a
# caption: its embedding is untrained noise, and it is dropped from prompts rather than fed in.
UNSEEN_WORDS = ("overhead",)
# Orbit ranges of the training renders (degrees, scene units); stages using this prior should
# draw their cameras from these so objects appear at the size the model learned them.
TRAINING_ORBIT = OrbitRange(**ORBIT)

__all__ = ["TRAINING_ORBIT", "VOCABULARY", "WEIGHTS_DIR", "BuiltinPrior", "load_builtin_prior", "validate_prompt", "weights_available"]


class BuiltinPrior:
    """Implements the ``Prior`` contract with the shipped UNet and bag-of-words text encoder."""

    name = "builtin"
    resolution = RESOLUTION

    def __init__(self, folder: Path = WEIGHTS_DIR, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> None:
        if not weights_available(folder):
            raise PriorError(f"The built-in prior's weights are missing from {str(folder)!r}; reinstall magic3d.")
        self.device = torch.device(device)
        self.folder = folder
        # diffusers loads only here: checking a prompt against the vocabulary must not pay its import.
        from diffusers import DDPMScheduler, UNet2DModel

        self.dtype = dtype  # the UNet's; the text and camera encoders stay in fp32 (they run once a run)
        # torch_dtype, not .to(dtype): diffusers warns about the latter on every load.
        self.unet = UNet2DModel.from_pretrained(folder / "unet", use_safetensors=True, torch_dtype=dtype)
        self.unet = self.unet.to(self.device).eval()
        self.unet.requires_grad_(False)
        self.text_encoder = load_text_encoder(folder / "text_encoder").to(self.device).requires_grad_(False)
        camera = load_camera_encoder(folder / "camera_encoder")
        self.camera_encoder = camera.to(self.device).requires_grad_(False) if camera is not None else None
        self.alphas_cumprod = DDPMScheduler.from_pretrained(folder / "scheduler").alphas_cumprod.to(self.device)
        self.num_train_timesteps = len(self.alphas_cumprod)

    @torch.no_grad()
    def encode_prompt(self, prompts: list[str], negative_prompts: list[str]) -> TextEmbeddings:
        negatives = negative_prompts or [""] * len(prompts)

        def rows(texts: list[str]) -> Tensor:
            # One text at a time: a few microseconds each, and an embedding that doesn't depend
            # on what it was batched with (batched matmuls round differently), so runs repeat.
            return torch.cat([self.text_encoder.encode([_drop_unseen(t)]) for t in texts])

        return TextEmbeddings(cond=rows(prompts), uncond=rows(negatives))

    def shape_prompt(self, prompt: str) -> str:
        """The prompt for textureless renders: training captioned those without their colour."""
        return " ".join(w for w in prompt.split() if w.strip(",.").lower() not in COLOURS)

    @torch.no_grad()
    def with_camera(self, text: Float[Tensor, "B D"], cameras: Float[Tensor, "B 2"] | None) -> Float[Tensor, "B D"]:
        """Text vectors plus the camera's, for both halves of guidance (the camera is not the prompt)."""
        if self.camera_encoder is None or cameras is None:
            return text
        return text + self.camera_encoder(cameras.to(text))

    def guidance_pair(
        self, uncond: Float[Tensor, "B D"], cond: Float[Tensor, "B D"], cameras: Float[Tensor, "B 2"] | None
    ) -> Float[Tensor, "2B D"]:
        """Unconditional rows then conditional ones, each with its view's camera: one batch for CFG."""
        return self.with_camera(torch.cat([uncond, cond]), None if cameras is None else cameras.repeat(2, 1))

    @torch.no_grad()
    def predict_noise(self, x_t: Tensor, t: Tensor, text: Float[Tensor, "B D"]) -> Tensor:
        return self.unet(x_t.to(self.dtype), t, class_labels=text.to(self.dtype)).sample.to(x_t.dtype)

    def sds(
        self,
        images: Float[Tensor, "B 3 H W"],
        embeddings: TextEmbeddings,
        step_ratio: float,
        cfg: SDSConfig,
        generator: torch.Generator | None = None,
    ) -> SDSOutput:
        x = F.interpolate(images, size=(RESOLUTION, RESOLUTION), mode="bilinear", antialias=True,
                          align_corners=False) * 2.0 - 1.0
        b = x.shape[0]
        t = sample_timesteps(b, step_ratio, cfg, self.num_train_timesteps, generator, self.device)
        noise = torch.randn(x.shape, generator=generator, device="cpu").to(x)  # the run's CPU generator
        a = self.alphas_cumprod[t].view(-1, 1, 1, 1).to(x)
        x_t = (a.sqrt() * x + (1 - a).sqrt() * noise).detach()
        text = self.guidance_pair(embeddings.uncond.to(x), embeddings.cond.to(x), embeddings.cameras)
        eps = self.predict_noise(torch.cat([x_t, x_t]), torch.cat([t, t]), text)
        eps_uncond, eps_cond = eps.chunk(2)
        eps_neg = None
        if embeddings.negative_views is not None:
            k = embeddings.negative_views.shape[1]
            cams = embeddings.cameras.repeat_interleave(k, 0) if embeddings.cameras is not None else None
            neg = self.with_camera(embeddings.negative_views.to(x).flatten(0, 1), cams)
            eps_neg = self.predict_noise(x_t.repeat_interleave(k, 0), t.repeat_interleave(k), neg)
            eps_neg = eps_neg.view(b, k, *x.shape[1:])
        eps_hat = guided_noise(eps_uncond, eps_cond, cfg.guidance_scale, eps_neg, embeddings.negative_weights)
        w = sds_weight(self.alphas_cumprod, t, cfg.weighting).view(-1, 1, 1, 1).to(x)
        loss, grad_norm = sds_loss(x, w * (eps_hat - noise), cfg.grad_clip)
        return SDSOutput(loss=loss, t=t, grad_norm=grad_norm)


    @torch.no_grad()
    def sample(
        self, prompts: list[str], steps: int = 100, guidance_scale: float = 4.0,
        generator: torch.Generator | None = None, cameras: Float[Tensor, "B 2"] | None = None,
    ) -> Float[Tensor, "B 3 H W"]:
        """Images in [0, 1] drawn by ancestral DDPM sampling with classifier-free guidance.

        ``cameras`` ((elevation, azimuth) in degrees per prompt) shows each object from that
        camera; None draws it from wherever the model likes.

        Ancestral rather than DDIM: with this small model deterministic DDIM drifts into
        frame-filling blobs, while the fresh noise of each DDPM step corrects its errors
        (measured: samples/benchmarks/builtin_training.json).
        """
        from diffusers import DDPMScheduler

        scheduler = DDPMScheduler.from_pretrained(self.folder / "scheduler")
        scheduler.set_timesteps(steps)
        emb = self.encode_prompt(prompts, [])
        text = self.guidance_pair(emb.uncond, emb.cond, cameras)
        x = torch.randn(len(prompts), 3, RESOLUTION, RESOLUTION, generator=generator).to(self.device)
        for t in scheduler.timesteps:
            t_batch = torch.full((2 * len(prompts),), int(t), device=self.device, dtype=torch.long)
            eps_uncond, eps_cond = self.predict_noise(torch.cat([x, x]), t_batch, text).chunk(2)
            eps = guided_noise(eps_uncond, eps_cond, guidance_scale)
            x = scheduler.step(eps, t, x, generator=generator).prev_sample
        return ((x + 1.0) / 2.0).clamp(0.0, 1.0)


def _drop_unseen(prompt: str) -> str:
    words = prompt.replace(",", " , ").split()
    return " ".join(w for w in words if w.lower() not in UNSEEN_WORDS)


def load_builtin_prior(cfg: object = None, device: torch.device | str = "cpu") -> BuiltinPrior:
    """The shipped prior at ``cfg.dtype`` (a PriorConfig's; see ``builtin_dtype``)."""
    device = torch.device(device)
    return BuiltinPrior(WEIGHTS_DIR, device, builtin_dtype(getattr(cfg, "dtype", "auto"), device))


def builtin_dtype(choice: str, device: torch.device) -> torch.dtype:
    """The UNet's precision. ``auto``: bf16 on a CPU that computes it natively (AMX or AVX512-BF16,
    where the UNet runs ~1.9x as fast: samples/benchmarks/e2e.json), else fp32 (emulated bf16 is
    slower than fp32; on CUDA the model is too small for fp16 to matter). ``float16`` applies on
    CUDA only, as for the diffusers priors."""
    if choice == "bfloat16":
        return torch.bfloat16
    if choice == "float16":
        return torch.float16 if device.type == "cuda" else torch.float32
    if choice == "auto" and device.type == "cpu" and native_cpu_bf16():
        return torch.bfloat16
    return torch.float32


def native_cpu_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return False
