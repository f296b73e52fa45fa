"""Diffusion priors behind one contract (``Prior`` in base.py): loading, checks and configuration.

A prior is named by ``builtin``, a hub id (``stabilityai/stable-diffusion-2-1-base``,
``DeepFloyd/IF-I-XL-v1.0``) or a local folder in diffusers layout (fine-tuned and DreamBooth
checkpoints load the same way). The model family is read from ``model_index.json``.

Importing this package imports no torch: the checks (``check_prior_available``,
``validate_prompt_for_prior``) run before any work, and torch comes with ``load_prior``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from magic3d.config_sections import SDSConfig
from magic3d.errors import PriorError

if TYPE_CHECKING:
    import torch

    from magic3d.guidance.base import Prior

BUILTIN = "builtin"


@dataclass
class PriorConfig:
    id: str = BUILTIN  # coarse-stage prior: "builtin", a hub id or a local diffusers folder
    fine_id: str = ""  # fine-stage prior; "" uses ``id``
    # auto: fp16 on CUDA, fp32 on CPU; the built-in prior: bf16 on a CPU with native bf16, else fp32
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    attention: Literal["auto", "sdpa", "xformers"] = "auto"  # auto: xformers when installed on CUDA
    compile: bool = False  # torch.compile the UNet (slow first step, faster after)
    local_files_only: bool = False  # never reach the hub, even when HF_HUB_OFFLINE is unset
    negative_prompt: str = ""
    view_dependent: bool = True  # ", front view" / side / back / overhead by camera
    perp_neg: bool = False  # Perp-Neg negative-view guidance against multi-face results
    perp_neg_weight: float = 1.0
    embedding_cache: bool = True  # text embeddings cached on disk beside the run


def load_prior(id_or_path: str, cfg: PriorConfig, device: torch.device, offload: bool = False) -> Prior:
    """The prior named ``id_or_path`` on ``device``; PriorError with one sentence when it can't load.

    A diffusers prior's text encoder visits ``device`` only for the one call that encodes a run's
    prompts, and its UNet moves there only after it (at the first SDS step). ``offload``
    (``runtime.offload``) also keeps Stable Diffusion's VAE decoder, which SDS never runs, on
    the CPU. The built-in prior is a few MB and ignores it.
    """
    import torch

    if id_or_path == BUILTIN:
        from magic3d.guidance.builtin import load_builtin_prior

        return load_builtin_prior(cfg, device)
    from magic3d.guidance.hub import resolve_pipeline
    from magic3d.guidance.stable_diffusion import network_dtype

    # fp16 runs fetch (and load) the fp16 weight files where the hub has them: half the download.
    variant = "fp16" if network_dtype(cfg, device) == torch.float16 else None
    folder, family = resolve_pipeline(id_or_path, cfg, variant=variant)
    if family == "if":
        from magic3d.guidance.deepfloyd import DeepFloydPrior as PriorClass
    else:
        from magic3d.guidance.stable_diffusion import StableDiffusionPrior as PriorClass
    try:
        return PriorClass(folder, id_or_path, cfg, device, offload=offload)
    except (ValueError, TypeError, KeyError, AttributeError, IndexError) as exc:
        # Networks that load but whose config holds values of the wrong kind (a sample_size of
        # "big"); damaged files are refused earlier, one PriorError per component.
        raise PriorError(
            f"The prior {id_or_path!r} has a config value magic3d cannot use ({type(exc).__name__}); "
            "download or save the model again, or use --prior builtin."
        ) from None


def check_prior_available(id_or_path: str, cfg: PriorConfig) -> None:
    """Cheap check (no model load, milliseconds) that ``id_or_path`` can be loaded here; raises
    PriorError. A folder or cached snapshot must be whole, with safetensors weights whose headers
    cover their files and JSON that parses; a hub id not cached needs a writable cache folder and
    a hub that answers, with no pickle-only component in its listing."""
    if id_or_path == BUILTIN:
        from magic3d.guidance.builtin_words import WEIGHTS_DIR, weights_available

        if not weights_available():
            raise PriorError(f"The built-in prior's weights are missing from {str(WEIGHTS_DIR)!r}; reinstall magic3d.")
        return
    from magic3d.guidance.hub import resolve_pipeline

    resolve_pipeline(id_or_path, cfg, check_only=True)


def validate_prompt_for_prior(prompt: str, id_or_path: str) -> None:
    """Prompts any open-vocabulary prior accepts; the built-in prior checks its vocabulary."""
    if id_or_path == BUILTIN:
        from magic3d.guidance.builtin_words import validate_prompt

        validate_prompt(prompt)


def __getattr__(name: str) -> Any:
    """The prior contract's tensor types (``Prior``, ``SDSOutput``, ``TextEmbeddings``), imported
    with torch on first use."""
    if name in ("Prior", "SDSOutput", "TextEmbeddings"):
        from magic3d.guidance import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BUILTIN", "Prior", "PriorConfig", "SDSConfig", "SDSOutput", "TextEmbeddings",
    "check_prior_available", "load_prior", "validate_prompt_for_prior",
]
