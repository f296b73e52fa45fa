"""Latent prior: Stable Diffusion 1.x/2.x through diffusers (Magic3D's high-resolution fine-stage prior).

Renders are resized to the VAE's input size (512 for SD 2.1 base), encoded with gradients
flowing through the encoder, noised at t, and scored by the UNet with classifier-free guidance.
On CUDA the networks run in fp16 while the SDS arithmetic stays in fp32. The text encoder is on
the device only for the one call that encodes a run's prompts, never beside the UNet; with
``offload`` the VAE decoder (SDS never decodes) stays on the CPU too.

``DiffusersPrior`` holds what the latent and the pixel (DeepFloyd IF) priors share: precision
and attention choices, the noise schedule, guided noise prediction and the SDS step itself.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from magic3d.errors import PriorError
from magic3d.guidance.base import SDSConfig, SDSOutput, TextEmbeddings
from magic3d.guidance.sds import guided_noise, sample_noise, sample_timesteps, sds_loss, sds_weight


def network_dtype(cfg: object, device: torch.device) -> torch.dtype:
    """The prior's network precision. ``auto``: fp16 on CUDA, fp32 on CPU (fp16 convolutions are
    slow or missing there); ``float16`` applies on CUDA only; ``bfloat16`` is honoured everywhere."""
    choice = getattr(cfg, "dtype", "auto")
    if choice == "bfloat16":
        return torch.bfloat16
    if device.type == "cpu" or choice == "float32":
        return torch.float32
    return torch.float16


def configure_attention(unet: torch.nn.Module, cfg: object, device: torch.device) -> str:
    """SDPA by default (diffusers' default processor); xformers when asked for, or on CUDA with
    ``auto`` when the ``gpu`` extra installed it. Returns the backend in use."""
    choice = getattr(cfg, "attention", "auto")
    if choice == "sdpa" or device.type != "cuda":
        return "sdpa"
    try:
        import xformers  # noqa: F401

        unet.enable_xformers_memory_efficient_attention()
        return "xformers"
    except Exception:
        if choice == "xformers":
            raise PriorError("prior.attention=xformers needs the gpu extra: pip install 'magic3d[gpu]'.") from None
        return "sdpa"


def resize(images: Float[Tensor, "B 3 H W"], size: int) -> Float[Tensor, "B 3 S S"]:
    """Bilinear resize; antialiased when shrinking so high-resolution renders don't alias."""
    if images.shape[-2:] == (size, size):
        return images
    shrink = images.shape[-1] > size or images.shape[-2] > size
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink)


def load_component(cls: Any, folder: Path, model_id: str, **kwargs: Any) -> Any:
    """``cls.from_pretrained(folder)`` from local files only (never remote code), or PriorError.

    Networks load from safetensors only (``use_safetensors=True``); a folder with pickle weights
    alone is refused before anything is unpickled. Loading in fp16 (``torch_dtype=torch.float16``)
    reads the folder's fp16 variant files (``*.fp16.safetensors``) when it has them: half the
    bytes, and no fp32 copy to cast. Whatever diffusers, transformers or safetensors raise on a
    damaged file becomes one PriorError sentence naming the component.
    """
    from magic3d.guidance.hub import component_variant
    from magic3d.guidance.weights import refuse_pickle_only

    if isinstance(cls, type) and issubclass(cls, torch.nn.Module):
        refuse_pickle_only(folder, folder.name, model_id)
        kwargs.setdefault("use_safetensors", True)
    if kwargs.get("torch_dtype", kwargs.get("dtype")) == torch.float16 and folder.is_dir():
        variant = component_variant((f.name for f in folder.iterdir()), "fp16")
        if variant is not None:
            kwargs.setdefault("variant", variant)
    try:
        return cls.from_pretrained(folder, local_files_only=True, **kwargs)
    except PriorError:
        raise  # already the sentence for people (ours: a T5 tokenizer naming a missing package)
    except ImportError as exc:
        what = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise PriorError(f"Loading {model_id!r} needs a missing package ({what}); install it and run again.") from None
    except Exception as exc:
        raise PriorError(
            f"The {folder.name} of prior {model_id!r} could not be loaded from {str(folder)!r} "
            f"({type(exc).__name__}); re-download the model or use --prior builtin."
        ) from None


def warn_if_truncated(tokenizer: Any, texts: list[str], model_id: str, limit: int) -> None:
    """Text encoders read at most ``limit`` tokens (the prior's ``max_text_length``: 77 for CLIP
    and IF's T5) and the tokenizer cuts the rest silently; say how much of an over-long prompt is lost."""
    # verbose=False: transformers' own "sequence length is longer than" log line would say it twice.
    lengths = [len(ids) for ids in tokenizer(texts, truncation=False, verbose=False).input_ids]
    for text, n in zip(texts, lengths, strict=True):
        if n > limit:
            start = text if len(text) <= 40 else text[:40] + "…"
            warnings.warn(
                f"The prompt {start!r} is {n} tokens long but the text encoder of {model_id!r} reads only "
                f"{limit}; its last {n - limit} tokens (and any view hint after them) are dropped, shorten it.",
                stacklevel=3,
            )


class DiffusersPrior:
    """Shared machinery: subclasses set ``unet``, ``resolution`` and implement ``to_model_input``."""

    name = "diffusers"
    text_encoder_cls: Any = None
    tokenizer_cls: Any = None

    def __init__(
        self, folder: Path, model_id: str, cfg: object, device: torch.device | str, offload: bool = False
    ) -> None:
        from diffusers import DDPMScheduler

        self.folder = Path(folder)
        self.model_id = model_id
        self.cfg = cfg
        self.device = torch.device(device)
        # Where the networks SDS doesn't run every step wait (``runtime.offload``, see load_prior).
        self.idle_device = torch.device("cpu") if offload else self.device
        self.dtype = network_dtype(cfg, self.device)
        self.tokenizer = load_component(self.tokenizer_cls, self.folder / "tokenizer", model_id)
        self.text_encoder: torch.nn.Module | None = None
        self.moves: list[tuple[str, str]] = []
        # Only the noise schedule is needed: every scheduler config of a diffusers folder
        # (PNDM for SD, DDPM for IF) carries the betas that DDPMScheduler turns into alpha_bar.
        scheduler = load_component(DDPMScheduler, self.folder / "scheduler", model_id)
        self.prediction_type = str(scheduler.config.get("prediction_type", "epsilon"))
        self.alphas_cumprod = scheduler.alphas_cumprod.to(self.device, torch.float32)
        self.num_train_timesteps = len(self.alphas_cumprod)

    @classmethod
    def without_folder(
        cls, alphas_cumprod: Tensor, cfg: object, device: torch.device | str, model_id: str = "in-memory",
        offload: bool = False,
    ) -> DiffusersPrior:
        """The shared state of a prior whose networks the caller supplies (``from_components``):
        no folder, no tokenizer, no text encoder, an eps-predicting schedule."""
        self = cls.__new__(cls)
        self.folder, self.model_id, self.cfg = Path("."), model_id, cfg
        self.device = torch.device(device)
        self.idle_device = torch.device("cpu") if offload else self.device
        self.dtype = network_dtype(cfg, self.device)
        self.tokenizer, self.text_encoder = None, None
        self.moves = []
        self.prediction_type = "epsilon"
        self.alphas_cumprod = alphas_cumprod.to(self.device, torch.float32)
        self.num_train_timesteps = len(self.alphas_cumprod)
        return self

    def setup_unet(self, unet: torch.nn.Module) -> torch.nn.Module:
        """Frozen UNet, left on the host until SDS first needs it (see ``place``)."""
        unet = unet.requires_grad_(False).eval()
        self.attention = configure_attention(unet, self.cfg, self.device)
        self.unet_on_device = self.device.type == "cpu"
        if getattr(self.cfg, "compile", False):
            unet = torch.compile(unet)
        return unet

    def place(self, name: str, module: torch.nn.Module, device: torch.device) -> None:
        """Move one network, and record it: the memory order is a property the tests check."""
        module.to(device)
        self.moves.append((name, str(device)))

    # One rule keeps the largest pair apart: the text encoder (IF's T5-XXL, ~11 GB) and the
    # UNet (IF-I-XL, ~8.6 GB) are never on the device together. Prompts are encoded (or read
    # from the cache) first, with the UNet still on the host; it moves at the first SDS step.

    def unet_to_device(self) -> None:
        if not self.unet_on_device:
            self.free_text_encoder()
            self.place("unet", self.unet, self.device)
            if self.device.type == "cuda":
                self.unet.to(memory_format=torch.channels_last)
            self.unet_on_device = True

    def unet_to_host(self) -> None:
        if self.unet_on_device and self.device.type != "cpu":
            self.place("unet", self.unet, torch.device("cpu"))
            self.unet_on_device = False
            torch.cuda.empty_cache()

    # --- text ---------------------------------------------------------------------------

    @property
    def max_text_length(self) -> int:
        """Tokens the text encoder reads: the tokenizer's ``model_max_length`` (77 for SD's CLIP),
        77 when its config has none (transformers then reports a huge sentinel, not a length)."""
        n = getattr(self.tokenizer, "model_max_length", None)
        return int(n) if isinstance(n, int) and 0 < n <= 4096 else 77

    def load_text_encoder(self) -> torch.nn.Module:
        if self.text_encoder is None:
            enc = load_component(self.text_encoder_cls, self.folder / "text_encoder", self.model_id, torch_dtype=self.dtype)
            self.text_encoder = enc.requires_grad_(False).eval()  # on the host until it encodes
        return self.text_encoder

    def free_text_encoder(self) -> None:
        """Drop the text encoder; it reloads (on the host) if a new prompt needs it."""
        if self.text_encoder is not None:
            self.text_encoder = None
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> Tensor:
        """Embeddings "N L D" of ``texts``, in one encoder call on the device."""
        encoder = self.load_text_encoder()
        warn_if_truncated(self.tokenizer, texts, self.model_id, self.max_text_length)
        tokens = self.tokenizer(texts, padding="max_length", max_length=self.max_text_length,
                                truncation=True, return_tensors="pt")
        self.unet_to_host()
        self.place("text_encoder", encoder, self.device)
        try:
            return self.run_text_encoder(encoder, tokens)
        finally:
            if self.device.type != "cpu":
                self.place("text_encoder", encoder, torch.device("cpu"))
                torch.cuda.empty_cache()

    def run_text_encoder(self, encoder: torch.nn.Module, tokens: Any) -> Tensor:
        return encoder(tokens.input_ids.to(self.device))[0]

    def encode_prompt(self, prompts: list[str], negative_prompts: list[str]) -> TextEmbeddings:
        negatives = negative_prompts or [""] * len(prompts)
        # Every distinct text once, in one call: the encoder visits the device once per run.
        unique = list(dict.fromkeys([*prompts, *negatives]))
        rows = self.encode_text(unique)
        row = {text: i for i, text in enumerate(unique)}
        pick = torch.tensor([row[t] for t in prompts], device=rows.device)
        pick_neg = torch.tensor([row[t] for t in negatives], device=rows.device)
        return TextEmbeddings(cond=rows[pick], uncond=rows[pick_neg])

    # --- score distillation ---------------------------------------------------------------

    def to_model_input(self, images: Float[Tensor, "B 3 H W"]) -> Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def predict_noise(self, x_t: Tensor, t: Tensor, text: Tensor) -> Tensor:
        """eps predicted by the UNet in fp32 (v-prediction models are converted to eps)."""
        self.unet_to_device()
        out = self.unet(x_t.to(self.dtype), t, encoder_hidden_states=text.to(self.device, self.dtype)).sample
        out = out[:, : x_t.shape[1]].float()  # IF also predicts a variance interpolation: drop it
        if self.prediction_type == "v_prediction":
            a = self.alphas_cumprod[t].view(-1, 1, 1, 1)
            out = a.sqrt() * out + (1 - a).sqrt() * x_t.float()
        return out

    def noise_predictions(
        self, x_t: Tensor, t: Tensor, embeddings: TextEmbeddings
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """(eps_uncond, eps_cond, eps_neg "B K ..." or None), one batched UNet call for the first two."""
        b = x_t.shape[0]
        eps = self.predict_noise(torch.cat([x_t, x_t]), torch.cat([t, t]),
                                 torch.cat([embeddings.uncond, embeddings.cond]))
        eps_uncond, eps_cond = eps.chunk(2)
        eps_neg = None
        if embeddings.negative_views is not None:
            k = embeddings.negative_views.shape[1]
            eps_neg = self.predict_noise(x_t.repeat_interleave(k, 0), t.repeat_interleave(k),
                                         embeddings.negative_views.flatten(0, 1)).view(b, k, *x_t.shape[1:])
        return eps_uncond, eps_cond, eps_neg

    def sds_on_input(
        self, x: Tensor, embeddings: TextEmbeddings, step_ratio: float, cfg: SDSConfig,
        generator: torch.Generator | None = None,
    ) -> SDSOutput:
        """SDS on the model's own input (latents or pixels in [-1, 1]); draws t, then the noise."""
        t = sample_timesteps(x.shape[0], step_ratio, cfg, self.num_train_timesteps, generator, self.device)
        noise = sample_noise(x.shape, generator, x)
        a = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        x_t = (a.sqrt() * x.detach().float() + (1 - a).sqrt() * noise).detach()
        eps_uncond, eps_cond, eps_neg = self.noise_predictions(x_t, t, embeddings)
        eps_hat = guided_noise(eps_uncond, eps_cond, cfg.guidance_scale, eps_neg, embeddings.negative_weights)
        w = sds_weight(self.alphas_cumprod, t, cfg.weighting).view(-1, 1, 1, 1)
        loss, grad_norm = sds_loss(x, w * (eps_hat - noise), cfg.grad_clip)
        return SDSOutput(loss=loss, t=t, grad_norm=grad_norm)

    def sds(
        self, images: Float[Tensor, "B 3 H W"], embeddings: TextEmbeddings, step_ratio: float, cfg: SDSConfig,
        generator: torch.Generator | None = None,
    ) -> SDSOutput:
        return self.sds_on_input(self.to_model_input(images), embeddings, step_ratio, cfg, generator)


class StableDiffusionPrior(DiffusersPrior):
    name = "stable-diffusion"

    def __init__(
        self, folder: Path, model_id: str, cfg: object, device: torch.device | str, offload: bool = False
    ) -> None:
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        self.text_encoder_cls, self.tokenizer_cls = CLIPTextModel, CLIPTokenizer
        super().__init__(folder, model_id, cfg, device, offload)
        vae = load_component(AutoencoderKL, self.folder / "vae", model_id, torch_dtype=self.dtype)
        unet = load_component(UNet2DConditionModel, self.folder / "unet", model_id, torch_dtype=self.dtype)
        self.setup_networks(unet, vae)

    @classmethod
    def from_components(
        cls, unet: torch.nn.Module, vae: torch.nn.Module, alphas_cumprod: Tensor, cfg: object,
        device: torch.device | str, model_id: str = "in-memory", offload: bool = False,
    ) -> StableDiffusionPrior:
        """A prior around networks already in memory (benchmarks with random weights); it has
        no text encoder, so embeddings must be supplied directly."""
        self = cls.without_folder(alphas_cumprod, cfg, device, model_id, offload)
        if self.dtype != torch.float32:
            unet, vae = unet.to(dtype=self.dtype), vae.to(dtype=self.dtype)
        self.setup_networks(unet, vae)
        return self

    def setup_networks(self, unet: torch.nn.Module, vae: torch.nn.Module) -> None:
        # SDS only encodes: with offload the decoder half of the VAE never takes GPU memory
        # (``vae.decode`` then needs latents on the CPU).
        for part_name, part in vae.named_children():
            part.to(self.idle_device if part_name in ("decoder", "post_quant_conv") else self.device)
        self.vae = vae.requires_grad_(False).eval()
        if self.device.type == "cuda":
            self.vae.to(memory_format=torch.channels_last)
        self.unet = self.setup_unet(unet)
        # The UNet's latent size times the VAE's downsampling (512 for SD 2.1 base, 768 for the
        # v-models); ``vae.config.sample_size`` is unreliable (SD 2 repositories say 768 for both).
        down = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.resolution = int(unet.config.sample_size) * down
        self.scale_factor = float(self.vae.config.scaling_factor)

    def encode_images(self, images: Float[Tensor, "B 3 H W"]) -> Float[Tensor, "B 4 h w"]:
        """Latents of renders in [0, 1]; differentiable (the encoder's weights are frozen, not its input)."""
        x = resize(images, self.resolution) * 2.0 - 1.0
        posterior = self.vae.encode(x.to(self.dtype)).latent_dist
        return posterior.mean.float() * self.scale_factor

    to_model_input = encode_images

    def sds_on_latents(
        self, latents: Tensor, embeddings: TextEmbeddings, step_ratio: float, cfg: SDSConfig,
        generator: torch.Generator | None = None,
    ) -> SDSOutput:
        return self.sds_on_input(latents, embeddings, step_ratio, cfg, generator)
