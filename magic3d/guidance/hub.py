"""Finding a prior's files: a local diffusers folder, or a hub id resolved through the local cache.

Environment variables are read at call time (not at import), so ``HF_HOME``, ``HF_HUB_CACHE``
and ``HF_HUB_OFFLINE`` set by a launcher or a test are honoured.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Literal

from magic3d.errors import PriorError

Family = Literal["sd", "if"]
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# What a pipeline needs; skips the safety checker, other precisions and framework duplicates.
ALLOW = ["model_index.json", "*/config.json", "*/*.safetensors", "*/*.txt", "*/*.json", "*/*.model"]


def hub_cache_dir() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    return Path(home) / "hub"


def offline(cfg_local_only: bool) -> bool:
    return cfg_local_only or os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def resolve_pipeline(id_or_path: str, cfg: object) -> tuple[Path, Family]:
    """(folder holding model_index.json, model family) or PriorError naming what is missing."""
    local_only = bool(getattr(cfg, "local_files_only", False))
    looks_like_path = id_or_path.startswith(("/", ".", "~")) or (os.sep in id_or_path and not HUB_ID.match(id_or_path))
    path = Path(id_or_path).expanduser()
    if path.is_dir() or looks_like_path:
        if not path.is_dir():
            raise PriorError(f"The prior folder {id_or_path!r} does not exist; give a diffusers folder, a hub id, or --prior builtin.")
        return path, family_of(path, id_or_path)
    if not HUB_ID.match(id_or_path):
        raise PriorError(f"{id_or_path!r} is neither a local folder nor a hub id like org/model; or use --prior builtin.")
    folder = download(id_or_path, local_only)
    return folder, family_of(folder, id_or_path)


def download(repo_id: str, local_only: bool) -> Path:
    from huggingface_hub import snapshot_download

    cache = hub_cache_dir()
    no_hub = offline(local_only)
    try:
        return Path(snapshot_download(repo_id, cache_dir=cache, local_files_only=no_hub, allow_patterns=ALLOW))
    except Exception as exc:  # LocalEntryNotFound, connection errors, gated repos: all mean "not here"
        how = ("it is not in the cache and the hub is offline" if no_hub
               else f"it could not be downloaded ({type(exc).__name__})")
        raise PriorError(
            f"Model {repo_id!r} is not available: {how}; cache folder {str(cache)!r}. Download it on a "
            f"connected machine with `huggingface-cli download {repo_id}` and copy the cache, pass a local "
            "diffusers folder to --prior, or use --prior builtin."
        ) from None


def family_of(folder: Path, name: str) -> Family:
    index = folder / "model_index.json"
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PriorError(f"The prior folder {name!r} has no model_index.json; it is not a diffusers pipeline.") from None
    except (OSError, ValueError, UnicodeDecodeError):
        raise PriorError(f"The prior folder {name!r} has a corrupt model_index.json; re-download or re-save it.") from None
    cls = str(data.get("_class_name", "")) if isinstance(data, dict) else ""
    if cls.startswith("IF"):
        return "if"
    if "StableDiffusion" in cls or "unet" in data and "vae" in data:
        return "sd"
    raise PriorError(f"The prior folder {name!r} holds a {cls or 'unknown'} pipeline; magic3d takes Stable Diffusion 1.x/2.x or DeepFloyd IF stage I.")
