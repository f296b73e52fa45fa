"""Multi-resolution grid encodings shared by the coarse field and the fine stage's texture.

Instant-NGP's hash grid through nerfstudio's ``HashEncoding``: tiny-cuda-nn's fused kernels
when the field lives on CUDA and the package is installed, a PyTorch path everywhere else.
``DenseGridEncoding`` is the CPU alternative for small fields: the same levels stored as plain
voxel grids, so a lookup is one trilinear ``grid_sample`` per level instead of eight hashed
gathers, several times faster on a CPU at the sizes the built-in preset uses.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float
from nerfstudio.field_components.encodings import HashEncoding
from torch import Tensor, nn

from magic3d.config_sections import DENSE_MAX_PARAMS, Encoding, dense_resolutions, dense_values
from magic3d.fields import hashgrid_kernel
from magic3d.fields.hashgrid_kernel import hashgrid_lookup

_PRIMES = (1, 2654435761, 805459861)  # Instant-NGP's spatial hash, as nerfstudio uses it
ENCODINGS: tuple[Encoding, ...] = ("hashgrid", "dense")


class TorchHashEncoding(HashEncoding):
    """nerfstudio's hash grid with faster paths off tiny-cuda-nn: on a CPU our C kernel
    (magic3d.fields.hashgrid_kernel, a few times faster again), elsewhere or without a compiler
    a PyTorch path that hashes and weights the eight corners of every level by broadcasting per
    axis instead of eight separate passes, about half the time of nerfstudio's. One table, one
    hash: the paths agree to float rounding."""

    def pytorch_fwd(self, in_tensor: Float[Tensor, "*bs 3"]) -> Float[Tensor, "*bs D"]:
        lead = in_tensor.shape[:-1]
        x = in_tensor.reshape(-1, 3)
        dim = self.get_out_dim()  # not -1: it is ambiguous for no points (a ray batch the occupancy grid empties)
        if hashgrid_kernel.usable(x, self.hash_table):
            return hashgrid_lookup(x, self.hash_table, self.scalings, self.hash_table_size).reshape(*lead, dim)
        return self.broadcast_fwd(x).reshape(*lead, dim)

    def broadcast_fwd(self, x: Float[Tensor, "N 3"]) -> Float[Tensor, "N D"]:
        scaled = x[:, None, :] * self.scalings.view(-1, 1).to(x)  # N L 3
        low = torch.floor(scaled)
        frac = scaled - low
        corners = torch.stack([low, torch.ceil(scaled)], dim=-1).long()  # N L 3 2
        primes = torch.tensor(_PRIMES, device=x.device).view(1, 1, 3, 1)
        # The table size is a power of two, so keeping only the low bits before the xor is exact.
        part = (corners * primes) & (self.hash_table_size - 1)
        index = part[:, :, 0, :, None, None] ^ part[:, :, 1, None, :, None] ^ part[:, :, 2, None, None, :]
        index = (index + self.hash_offset.to(x.device).view(1, -1, 1, 1, 1)).flatten(2)  # N L 8
        w = torch.stack([1.0 - frac, frac], dim=-1)  # N L 3 2
        weights = (w[:, :, 0, :, None, None] * w[:, :, 1, None, :, None] * w[:, :, 2, None, None, :]).flatten(2)
        features = (self.hash_table[index] * weights[..., None]).sum(2)  # N L F
        return features.reshape(x.shape[0], -1)


def hash_encoding(
    levels: int, features_per_level: int, log2_hashmap_size: int, min_res: int, max_res: int,
    device: torch.device | str = "cpu",
) -> HashEncoding:
    """tiny-cuda-nn's fused kernels for a field on CUDA when installed, else a PyTorch path.

    The fused grid returns fp16 features: callers cast them to their MLP's dtype.
    """
    kwargs = dict(num_levels=levels, min_res=min_res, max_res=max_res,
                  log2_hashmap_size=log2_hashmap_size, features_per_level=features_per_level)
    if torch.device(device).type == "cuda" and tcnn_available():
        return HashEncoding(**kwargs, implementation="tcnn")
    return TorchHashEncoding(**kwargs, implementation="torch")


class DenseGridEncoding(nn.Module):
    """``levels`` voxel grids of ``features`` channels, sides growing geometrically from ``min_res``
    to ``max_res`` as a hash grid's levels do, read by trilinear interpolation.

    Unlike a hash grid nothing collides, so every level is exact; the price is memory cubic in
    the side, which is why it suits the low resolutions of CPU presets only.
    """

    def __init__(self, levels: int, features: int, min_res: int, max_res: int,
                 device: torch.device | str = "cpu", init_scale: float = 1e-3) -> None:
        super().__init__()
        self.resolutions = dense_resolutions(levels, min_res, max_res)
        count = dense_values(levels, features, min_res, max_res)
        if count > DENSE_MAX_PARAMS:  # the config check says this before any work (magic3d.config)
            raise ValueError(f"a dense encoding of {count:,} values is over the {DENSE_MAX_PARAMS:,} allowed")
        # Uniform in +-init_scale, as nerfstudio starts its hash table: features near zero, so the
        # field starts as its MLP's bias plus Magic3D's density blob.
        self.grids = nn.ParameterList(
            nn.Parameter((torch.rand(1, features, r, r, r, device=device) * 2.0 - 1.0) * init_scale)
            for r in self.resolutions
        )
        self.features = features

    def get_out_dim(self) -> int:
        return self.features * len(self.resolutions)

    def forward(self, in_tensor: Float[Tensor, "*bs 3"]) -> Float[Tensor, "*bs D"]:
        lead = in_tensor.shape[:-1]
        # grid_sample reads (x, y, z) as (W, H, D) of a "1 C D H W" volume over [-1, 1]: the
        # grids' axes are simply stored in that order. Corners align with 0 and 1, as a hash
        # grid's vertices do.
        where = (in_tensor.reshape(1, -1, 1, 1, 3) * 2.0 - 1.0).to(self.grids[0].dtype)
        levels = [F.grid_sample(grid, where, mode="bilinear", padding_mode="border", align_corners=True)
                  for grid in self.grids]  # each "1 F N 1 1"
        features = torch.cat(levels, dim=1).view(self.get_out_dim(), -1)  # D N
        return features.t().reshape(*lead, self.get_out_dim())  # -1 is ambiguous for no points


def grid_encoding(
    kind: Encoding, levels: int, features_per_level: int, log2_hashmap_size: int, min_res: int, max_res: int,
    device: torch.device | str = "cpu",
) -> nn.Module:
    """The field's encoding by name: ``hashgrid`` (``hash_encoding``) or ``dense`` (``DenseGridEncoding``,
    which has no table to size: ``log2_hashmap_size`` is unused)."""
    if kind == "dense":
        return DenseGridEncoding(levels, features_per_level, min_res, max_res, device)
    if kind == "hashgrid":
        return hash_encoding(levels, features_per_level, log2_hashmap_size, min_res, max_res, device)
    raise ValueError(f"unknown encoding {kind!r}; use one of {', '.join(ENCODINGS)}")


def tcnn_available() -> bool:
    try:
        import tinycudann  # noqa: F401
    except ImportError:
        return False
    return True
