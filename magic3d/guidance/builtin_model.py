"""The built-in prior's networks: a bag-of-words text encoder and a small pixel-space UNet.

The text vector is added to the UNet's time embedding (``class_embed_type="identity"``):
conv-only, several times cheaper than cross-attention, and enough for prompts made of a
kind, a colour, a size and a view word. The camera's (elevation, azimuth) is added the same way
(``CameraEncoder``): a view word names a quarter of the orbit, inside which a cube or a house can
face any way, so without the exact angle each SDS view pulls towards a differently turned object
and the field settles on their average, a blob.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from jaxtyping import Float
from safetensors.torch import load_file
from torch import Tensor, nn

if TYPE_CHECKING:
    from diffusers import UNet2DModel

from magic3d.guidance.builtin_words import VOCABULARY, tokenize
from magic3d.storage import atomic_write_tensors

RESOLUTION = 32
BASE_CHANNELS = 64
TIME_DIM = BASE_CHANNELS * 4


class BagOfWordsEncoder(nn.Module):
    """Sum of word embeddings through a small MLP; an empty bag is the unconditional prompt."""

    def __init__(self, dim: int = TIME_DIM, vocabulary: tuple[str, ...] = VOCABULARY) -> None:
        super().__init__()
        self.vocabulary = vocabulary
        self.index = {w: i + 1 for i, w in enumerate(vocabulary)}  # 0 is the null token
        self.embed = nn.Embedding(len(vocabulary) + 1, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def ids(self, texts: list[str]) -> Tensor:
        rows = [[self.index[w] for w in tokenize(t)[0]] or [0] for t in texts]
        width = max(len(r) for r in rows)
        return torch.tensor([r + [-1] * (width - len(r)) for r in rows], dtype=torch.long, device="cpu")  # encode() moves them

    def forward(self, ids: Tensor) -> Float[Tensor, "B D"]:
        mask = (ids >= 0).unsqueeze(-1)
        bag = (self.embed(ids.clamp(min=0)) * mask).sum(1)
        return self.mlp(bag)

    def encode(self, texts: list[str]) -> Float[Tensor, "B D"]:
        return self(self.ids(texts).to(self.embed.weight.device))


# A cube looks the same every quarter turn and a house every half turn: harmonics of the azimuth
# up to the fourth give the network those periods directly instead of making it build them.
AZIMUTH_HARMONICS = (1.0, 2.0, 4.0)


class CameraEncoder(nn.Module):
    """(elevation, azimuth) in degrees to a vector added to the text vector; NaN rows mean "no camera".

    The last layer starts at zero, so a text-only model gains it without changing what it draws,
    and training drops the camera now and then so the prior still samples without one.
    """

    def __init__(self, dim: int = TIME_DIM, hidden: int = 128) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(2 * len(AZIMUTH_HARMONICS) + 3, hidden), nn.SiLU(), nn.Linear(hidden, dim))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    @staticmethod
    def features(cameras: Float[Tensor, "B 2"]) -> Float[Tensor, "B F"]:
        present = ~cameras.isnan().any(-1, keepdim=True)
        rad = torch.deg2rad(torch.nan_to_num(cameras))
        azimuth = rad[:, 1:] * torch.tensor(AZIMUTH_HARMONICS, dtype=rad.dtype, device=rad.device)
        feats = torch.cat([azimuth.sin(), azimuth.cos(), rad[:, :1].sin(), rad[:, :1].cos(),
                           torch.ones_like(rad[:, :1])], -1)
        return feats * present

    def forward(self, cameras: Float[Tensor, "B 2"]) -> Float[Tensor, "B D"]:
        return self.mlp(self.features(cameras))


def build_unet() -> UNet2DModel:
    from diffusers import UNet2DModel

    return UNet2DModel(
        sample_size=RESOLUTION,
        in_channels=3,
        out_channels=3,
        layers_per_block=1,
        block_out_channels=(BASE_CHANNELS, BASE_CHANNELS * 2, BASE_CHANNELS * 2),
        down_block_types=("DownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "UpBlock2D"),
        class_embed_type="identity",
        norm_num_groups=16,
    )


def save_text_encoder(encoder: BagOfWordsEncoder, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_tensors(folder / "model.safetensors", encoder.state_dict())
    config = {"dim": encoder.embed.embedding_dim, "vocabulary": list(encoder.vocabulary)}
    (folder / "config.json").write_text(json.dumps(config, indent=1), encoding="utf-8")


def save_camera_encoder(encoder: CameraEncoder, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_tensors(folder / "model.safetensors", encoder.state_dict())
    config = {"dim": encoder.mlp[-1].out_features, "hidden": encoder.mlp[0].out_features}
    (folder / "config.json").write_text(json.dumps(config, indent=1), encoding="utf-8")


def load_camera_encoder(folder: Path) -> CameraEncoder | None:
    """The camera encoder saved beside the UNet, or None for weights trained on text alone."""
    if not (folder / "model.safetensors").is_file():
        return None
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    encoder = CameraEncoder(config["dim"], config["hidden"])
    encoder.load_state_dict(load_file(str(folder / "model.safetensors")))
    return encoder.eval()


def load_text_encoder(folder: Path) -> BagOfWordsEncoder:
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    encoder = BagOfWordsEncoder(config["dim"], tuple(config["vocabulary"]))
    encoder.load_state_dict(load_file(str(folder / "model.safetensors")))
    return encoder.eval()
