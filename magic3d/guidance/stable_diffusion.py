"""Latent prior: Stable Diffusion 1.x/2.x through diffusers (Magic3D's high-resolution fine-stage prior).

Renders are resized to the VAE's input size (512 for SD 2.1 base), encoded with gradients
flowing through the encoder, noised at t, and scored by the UNet with classifier-free guidance.
On CUDA the networks run in fp16 while the SDS arithmetic stays in fp32.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from magic3d.guidance.base import SDSConfig, SDSOutput, TextEmbeddings
from magic3d.guidance.sds import guided_noise, sample_timesteps, sds_loss, sds_weight


def network_dtype(cfg: object, device: torch.device) -> torch.dtype:
    choice = getattr(cfg, "dtype", "auto")
    if choice == "float16" or (choice == "auto" and device.type == "cuda"):
        return torch.float16
    return torch.float32


def configure_attention(unet: torch.nn.Module, cfg: object, device: torch.device) -> str:
    """SDPA by default; xformers when asked for, or on CUDA with ``auto`` when it is installed."""
    choice = getattr(cfg, "attention", "auto")
    if choice == "sdpa" or device.type != "cuda":
        return "sdpa"
    try:
        import xformers  # noqa: F401

        unet.enable_xformers_memory_efficient_attention()
        return "xformers"
    except Exception:
        if choice == "xformers":
            from magic3d.errors import PriorError

            raise PriorError("prior.attention=xformers needs the gpu extra: pip install 'magic3d[gpu]'.") from None
        return "sdpa"


class StableDiffusionPrior:
    name = "stable-diffusion"

    def __init__(self, folder: Path, model_id: str, cfg: object, device: torch.device | str) -> None:
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        self.device = torch.device(device)
        self.model_id = model_id
        self.dtype = network_dtype(cfg, self.device)
        load = {"torch_dtype": self.dtype, "local_files_only": True}
        self.tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True)
        self.text_encoder = CLIPTextModel.from_pretrained(folder / "text_encoder", **load).to(self.device)
        self.vae = AutoencoderKL.from_pretrained(folder / "vae", **load).to(self.device).requires_grad_(False)
        self.unet = UNet2DConditionModel.from_pretrained(folder / "unet", **load).to(self.device)
        self.unet.requires_grad_(False).eval()
        self.text_encoder.requires_grad_(False).eval()
        scheduler = DDPMScheduler.from_pretrained(folder / "scheduler", local_files_only=True)
        self.alphas_cumprod = scheduler.alphas_cumprod.to(self.device, torch.float32)
        self.num_train_timesteps = len(self.alphas_cumprod)
        self.resolution = int(self.vae.config.sample_size)
        self.scale_factor = float(self.vae.config.scaling_factor)
        if self.device.type == "cuda":
            self.unet.to(memory_format=torch.channels_last)
        self.attention = configure_attention(self.unet, cfg, self.device)
        if getattr(cfg, "compile", False):
            self.unet = torch.compile(self.unet)

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> Tensor:
        tokens = self.tokenizer(texts, padding="max_length", max_length=self.tokenizer.model_max_length,
                                truncation=True, return_tensors="pt")
        return self.text_encoder(tokens.input_ids.to(self.device))[0]

    def encode_prompt(self, prompts: list[str], negative_prompts: list[str]) -> TextEmbeddings:
        return TextEmbeddings(cond=self.encode_text(prompts), uncond=self.encode_text(negative_prompts or [""] * len(prompts)))

    def free_text_encoder(self) -> None:
        """Embeddings are cached once per run; the encoder's memory is better spent on the UNet."""
        self.text_encoder = None

    def encode_images(self, images: Float[Tensor, "B 3 H W"]) -> Float[Tensor, "B 4 h w"]:
        x = F.interpolate(images, size=(self.resolution, self.resolution), mode="bilinear", align_corners=False)
        posterior = self.vae.encode((x * 2.0 - 1.0).to(self.dtype)).latent_dist
        return posterior.mean.float() * self.scale_factor

    @torch.no_grad()
    def predict_noise(self, latents: Tensor, t: Tensor, text: Tensor) -> Tensor:
        return self.unet(latents.to(self.dtype), t, encoder_hidden_states=text.to(self.dtype)).sample.float()

    def sds_on_latents(
        self, latents: Tensor, embeddings: TextEmbeddings, step_ratio: float, cfg: SDSConfig,
        generator: torch.Generator | None = None,
    ) -> SDSOutput:
        b = latents.shape[0]
        t = sample_timesteps(b, step_ratio, cfg, self.num_train_timesteps, generator, self.device)
        noise = torch.randn(latents.shape, generator=generator).to(latents)
        a = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        noisy = (a.sqrt() * latents + (1 - a).sqrt() * noise).detach()
        eps = self.predict_noise(torch.cat([noisy, noisy]), torch.cat([t, t]),
                                 torch.cat([embeddings.uncond, embeddings.cond]))
        eps_uncond, eps_cond = eps.chunk(2)
        eps_neg = None
        if embeddings.negative_views is not None:
            k = embeddings.negative_views.shape[1]
            eps_neg = self.predict_noise(noisy.repeat_interleave(k, 0), t.repeat_interleave(k),
                                         embeddings.negative_views.flatten(0, 1)).view(b, k, *latents.shape[1:])
        eps_hat = guided_noise(eps_uncond, eps_cond, cfg.guidance_scale, eps_neg, embeddings.negative_weights)
        w = sds_weight(self.alphas_cumprod, t, cfg.weighting).view(-1, 1, 1, 1)
        loss, grad_norm = sds_loss(latents, w * (eps_hat - noise), cfg.grad_clip)
        return SDSOutput(loss=loss, t=t, grad_norm=grad_norm)

    def sds(
        self, images: Float[Tensor, "B 3 H W"], embeddings: TextEmbeddings, step_ratio: float, cfg: SDSConfig,
        generator: torch.Generator | None = None,
    ) -> SDSOutput:
        return self.sds_on_latents(self.encode_images(images), embeddings, step_ratio, cfg, generator)
