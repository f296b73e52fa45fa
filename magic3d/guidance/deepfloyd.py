"""Pixel prior: DeepFloyd IF stage I at 64x64 (the role eDiff-I's base model plays in Magic3D's coarse stage).

No VAE: renders are resized to the UNet's resolution and scored in pixel space ([-1, 1]).
IF's UNet predicts eps and a variance interpolation (6 channels); SDS uses the eps half.
Its T5-XXL text encoder is ~9 GB in fp16 and only needed once per prompt: embeddings are
computed up front (and cached on disk by ``magic3d.prompts``), then the encoder is freed.
Real IF checkpoints ship their tokenizer as a bare sentencepiece model (``spiece.model``),
read by ``T5SentencePieceTokenizer`` (transformers' conversion would need a newer protobuf than
the project can install); the weights are gated on the hub (accept the licence first).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from magic3d.guidance.stable_diffusion import DiffusersPrior, load_component, resize
from magic3d.guidance.t5_tokenizer import T5SentencePieceTokenizer, import_sentencepiece

# IF was trained on 77 T5 tokens and its own pipeline always pads and cuts to 77, whatever
# (or nothing) the tokenizer config says about ``model_max_length``.
IF_TEXT_LENGTH = 77


def require_sentencepiece_if_needed(tokenizer_dir: Path, model_id: str) -> None:
    """Hub IF repositories ship only ``spiece.model``; reading it needs the sentencepiece package."""
    if (tokenizer_dir / "tokenizer.json").is_file() or not (tokenizer_dir / "spiece.model").is_file():
        return
    import_sentencepiece(repr(model_id))


def tokenizer_class(tokenizer_dir: Path) -> Any:
    """transformers' fast tokenizer when the folder has a tokenizer.json (it needs neither
    sentencepiece nor protobuf then), else ours on ``spiece.model``."""
    if (tokenizer_dir / "tokenizer.json").is_file():
        from transformers import AutoTokenizer

        return AutoTokenizer
    return T5SentencePieceTokenizer


class DeepFloydPrior(DiffusersPrior):
    name = "deepfloyd-if"

    def __init__(
        self, folder: Path, model_id: str, cfg: object, device: torch.device | str, offload: bool = False
    ) -> None:
        from diffusers import UNet2DConditionModel
        from transformers import T5EncoderModel

        self.text_encoder_cls = T5EncoderModel
        self.tokenizer_cls = tokenizer_class(Path(folder) / "tokenizer")
        require_sentencepiece_if_needed(Path(folder) / "tokenizer", model_id)
        super().__init__(folder, model_id, cfg, device, offload)
        unet = load_component(UNet2DConditionModel, self.folder / "unet", model_id, torch_dtype=self.dtype)
        self.unet = self.setup_unet(unet)
        self.resolution = int(self.unet.config.sample_size)

    @property
    def max_text_length(self) -> int:
        return IF_TEXT_LENGTH

    def run_text_encoder(self, encoder: torch.nn.Module, tokens: Any) -> Tensor:
        # T5 sees the padding mask (as IF's own pipeline does), so padded positions don't
        # attend to each other and the embedding of a prompt doesn't depend on padding length.
        return encoder(tokens.input_ids.to(self.device), attention_mask=tokens.attention_mask.to(self.device))[0]

    def to_model_input(self, images: Float[Tensor, "B 3 H W"]) -> Float[Tensor, "B 3 S S"]:
        return resize(images, self.resolution).float() * 2.0 - 1.0

    @classmethod
    def from_components(
        cls, unet: torch.nn.Module, alphas_cumprod: Tensor, cfg: object, device: torch.device | str,
        model_id: str = "in-memory", offload: bool = False,
    ) -> DeepFloydPrior:
        """A prior around a UNet already in memory (benchmarks with random weights, see
        scripts/gpu_check.py); it has no text encoder, so embeddings must be supplied directly."""
        self = cls.without_folder(alphas_cumprod, cfg, device, model_id, offload)
        if self.dtype != torch.float32:
            unet = unet.to(dtype=self.dtype)
        self.unet = self.setup_unet(unet)
        self.resolution = int(self.unet.config.sample_size)
        return self
