"""Finding a prior's files: a local diffusers folder, or a hub id resolved through the local cache.

Environment variables are read at call time (not at import), so ``HF_HOME``, ``HF_HUB_CACHE``,
``HF_HUB_OFFLINE`` and ``HF_HUB_ETAG_TIMEOUT`` set by a launcher or a test are honoured.

Before anything is fetched the cache folder must take a file and the hub must answer one
metadata request within ``HF_HUB_ETAG_TIMEOUT`` seconds (10 by default, no retries): without
a network the answer is one error line at once, not huggingface_hub's retry loop. Every folder
(local, cached or downloaded) goes through ``weights.check_pipeline_files``.
"""

from __future__ import annotations

import glob
import json
import os
import re
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from magic3d.errors import PriorError
from magic3d.guidance.weights import check_pipeline_files, missing_part, refuse_pickle_only_listing

Family = Literal["sd", "if"]
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# What a pipeline needs; skips the safety checker and framework duplicates (.bin, .msgpack, .onnx).
ALLOW = ["model_index.json", "*/config.json", "*/*.safetensors", "*/*.txt", "*/*.json", "*/*.model"]
IGNORE = ["safety_checker/*", "feature_extractor/*", "watermarker/*", "*.bin.index*.json", "*.msgpack.index*.json"]
# Shard suffix of sharded weights: ``model-00001-of-00002.safetensors``, ``model.fp16-00001-of-00002.safetensors``.
SHARD = re.compile(r"-\d{5}-of-\d{5}$")


def is_weights(name: str) -> bool:
    """Safetensors weights or their shard index (``*.safetensors.index[.variant].json``)."""
    return name.endswith(".safetensors") or (".safetensors.index." in name and name.endswith(".json"))


def weights_variant(name: str) -> str | None:
    """The variant of a weights file name as diffusers and transformers write them, None for the
    plain (fp32) files: "fp16" for ``diffusion_pytorch_model.fp16.safetensors``,
    ``model.fp16-00001-of-00002.safetensors``, ``x-00001-of-00002.fp16.safetensors`` and
    ``model.safetensors.index.fp16.json``; "non_ema" for ``*.non_ema.safetensors``."""
    parts = Path(name).name.split(".")
    middle = parts[parts.index("index") + 1 : -1] if name.endswith(".json") and "index" in parts else parts[1:-1]
    return ".".join(SHARD.sub("", p) for p in middle) or None


def component_variant(names: Iterable[str], variant: str | None) -> str | None:
    """``variant`` when a component's weights come in it, else None (its plain fp32 files)."""
    if variant is None:
        return None
    return variant if any(is_weights(n) and weights_variant(n) == variant for n in names) else None


def select_files(files: Iterable[str], variant: str | None) -> list[str]:
    """The repository files a pipeline run needs: ``ALLOW`` minus ``IGNORE``, and per component
    folder one set of weights: the ``variant`` files (``"fp16"`` for fp16 runs, about half the
    bytes) where the component has them, else the plain fp32 files; other variants (the other
    precision, ``non_ema``) are left on the hub."""
    from fnmatch import fnmatch

    wanted = [f for f in files
              if any(fnmatch(f, p) for p in ALLOW) and not any(fnmatch(f, p) for p in IGNORE)]
    by_component: dict[str, list[str]] = {}
    for f in wanted:
        by_component.setdefault(f.split("/")[0] if "/" in f else "", []).append(f)
    chosen = {c: component_variant(names, variant) for c, names in by_component.items()}
    return [f for f in wanted
            if not is_weights(f) or weights_variant(f) == chosen[f.split("/")[0] if "/" in f else ""]]


def hub_cache_dir() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    return Path(home) / "hub"


def cache_variable() -> str | None:
    """The environment variable that chose the cache folder; None for the default."""
    return next((v for v in ("HF_HUB_CACHE", "HF_HOME") if os.environ.get(v)), None)


def offline(cfg_local_only: bool) -> bool:
    return cfg_local_only or os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def metadata_timeout() -> float:
    """Seconds to wait for the hub's answer to one metadata request: ``HF_HUB_ETAG_TIMEOUT``
    (huggingface_hub's own setting, read at call time), 10 by default."""
    try:
        value = float(os.environ.get("HF_HUB_ETAG_TIMEOUT") or 10)
    except ValueError:
        return 10.0
    return value if 0 < value < 3600 else 10.0


def ensure_writable_cache(cache: Path, repo_id: str) -> None:
    """PriorError naming the folder and its variable unless a file can be created in ``cache``
    (made, with its parents, when missing): checked before any download, which would otherwise
    fail only after the hub was asked (and, for some errors, after minutes of retries)."""
    try:
        cache.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".magic3d-write-check-", dir=cache)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        var = cache_variable()
        if cache.exists() and not cache.is_dir():
            why = "it is a file"
        elif isinstance(exc, (NotADirectoryError, FileExistsError)):
            why = "a part of its path is a file"
        else:
            why = (exc.strerror or type(exc).__name__).lower()
        source = f"from {var}" if var else "the default"
        raise PriorError(
            f"The hub cache folder {str(cache)!r} ({source}) cannot be written ({why}), so {repo_id} cannot be "
            f"downloaded; set {var or 'HF_HOME'} to a writable folder, or use --prior builtin."
        ) from None


def hub_files(repo_id: str) -> list[str]:
    """The repository's file names, in one metadata request with a timeout and no retries (the
    hub client retries a failing request for about 25 s otherwise)."""
    from huggingface_hub import HfApi

    api = HfApi()
    siblings = api.model_info(repo_id, timeout=metadata_timeout()).siblings
    if siblings is None:
        return list(api.list_repo_files(repo_id))
    return [s.rfilename for s in siblings]


def resolve_pipeline(
    id_or_path: str, cfg: object, check_only: bool = False, variant: str | None = None
) -> tuple[Path, Family]:
    """(folder holding model_index.json, model family) or PriorError naming what is wrong.

    A local folder must be a whole pipeline whose files pass ``check_pipeline_files`` (no
    pickle-only weights, no damaged safetensors or JSON). ``check_only`` never downloads
    weights: a hub id must be cached, or (hub allowed) its model_index.json fetchable, its
    listing free of pickle-only components and the cache folder writable; the returned folder
    then may hold only that file. ``variant`` ("fp16" for fp16 runs) downloads those weight
    files instead of the fp32 ones where a component has them (see ``select_files``).
    """
    local_only = bool(getattr(cfg, "local_files_only", False))
    looks_like_path = id_or_path.startswith(("/", ".", "~")) or (os.sep in id_or_path and not HUB_ID.match(id_or_path))
    path = Path(id_or_path).expanduser()
    if path.is_dir() or looks_like_path:
        if not path.is_dir():
            raise PriorError(f"The prior folder {id_or_path!r} does not exist; give a diffusers folder, a hub id, or --prior builtin.")
        family = family_of(path, id_or_path)
        check_pipeline_files(path, family, id_or_path, complete=True)
        return path, family
    if not HUB_ID.match(id_or_path):
        raise PriorError(f"{id_or_path!r} is neither a local folder nor a hub id like org/model; or use --prior builtin.")
    return check_available(id_or_path, local_only) if check_only else download(id_or_path, local_only, variant)


def ask_hub(repo_id: str, cache: Path) -> list[str]:
    """Before fetching anything: the cache takes files, the hub answers (quickly) and the
    repository's weights are not pickle-only."""
    ensure_writable_cache(cache, repo_id)
    try:
        files = hub_files(repo_id)
    except Exception as exc:  # connection errors, timeouts, unknown or private repos
        raise missing_model(repo_id, cache, False, exc) from None
    refuse_pickle_only_listing(files, repo_id)
    return files


def download(repo_id: str, local_only: bool, variant: str | None = None) -> tuple[Path, Family]:
    """The snapshot folder of ``repo_id``: from the cache, or (hub allowed) with the files
    ``select_files`` picks for ``variant`` downloaded into it; checked whole."""
    from huggingface_hub import snapshot_download

    cache = hub_cache_dir()
    no_hub = offline(local_only)
    try:
        if no_hub:
            folder = Path(snapshot_download(repo_id, cache_dir=cache, local_files_only=True))
        else:
            # Which weights to fetch depends on which variants each component has, so list the
            # repository first; exact names (escaped: the hub matches them as fnmatch patterns).
            files = select_files(ask_hub(repo_id, cache), variant)
            folder = Path(snapshot_download(repo_id, cache_dir=cache, etag_timeout=metadata_timeout(),
                                            allow_patterns=[glob.escape(f) for f in files]))
    except PriorError:
        raise
    except Exception as exc:  # LocalEntryNotFound, connection errors, gated repos: all mean "not here"
        raise missing_model(repo_id, cache, no_hub, exc) from None
    family = family_of(folder, repo_id)
    check_pipeline_files(folder, family, repo_id, complete=False)
    gone = missing_part(folder, family)
    if gone is not None:
        raise missing_model(repo_id, cache, no_hub, None, gone)
    return folder, family


def check_available(repo_id: str, local_only: bool) -> tuple[Path, Family]:
    """Cheap availability check: the cached snapshot (its files checked), else (hub allowed)
    its model_index.json fetched, which proves the hub is reachable and the repo is readable."""
    from huggingface_hub import hf_hub_download, snapshot_download

    cache = hub_cache_dir()
    no_hub = offline(local_only)
    folder: Path | None = None
    try:
        folder = Path(snapshot_download(repo_id, cache_dir=cache, local_files_only=True, allow_patterns=ALLOW))
    except Exception:
        pass
    if folder is not None and (folder / "model_index.json").is_file():
        family = family_of(folder, repo_id)
        check_pipeline_files(folder, family, repo_id, complete=False)
        gone = missing_part(folder, family)
        if gone is None:
            return folder, family
        if no_hub:
            raise missing_model(repo_id, cache, True, None, gone)
        ask_hub(repo_id, cache)  # the load downloads the rest
        return folder, family
    if no_hub:
        raise missing_model(repo_id, cache, True, None)
    ask_hub(repo_id, cache)
    try:
        folder = Path(hf_hub_download(repo_id, "model_index.json", cache_dir=cache, etag_timeout=metadata_timeout()))
    except Exception as exc:
        raise missing_model(repo_id, cache, False, exc) from None
    return folder.parent, family_of(folder.parent, repo_id)


def missing_model(repo_id: str, cache: Path, no_hub: bool, exc: Exception | None, gone: str | None = None) -> PriorError:
    """The one sentence a user sees when a hub model can't be had (short: the cache path is long)."""
    where = f"not in the hub cache {str(cache)!r}" if gone is None else (
        f"only partly in the hub cache {str(cache)!r} ({gone} is missing)")
    if no_hub:
        why = "the hub is offline"
    elif exc is None:
        why = "the hub did not give the rest"
    elif unreachable(exc):
        why = f"the hub could not be reached ({type(exc).__name__})"
    else:
        why = f"it could not be fetched ({type(exc).__name__})"
    return PriorError(f"{repo_id!r} is {where} and {why}; download it elsewhere with `hf download` and copy "
                      "the cache here, or use --prior builtin.")


def unreachable(exc: Exception | None) -> bool:
    """Whether ``exc`` says the hub could not be talked to at all (no network, DNS, timeout)."""
    network: list[type] = [ConnectionError, TimeoutError]
    # huggingface_hub 2.x talks through httpx2, older versions through httpx or requests; a
    # client that isn't imported can't have raised.
    for client, name in (("httpx2", "TransportError"), ("httpx", "TransportError"), ("requests", "ConnectionError")):
        kind = getattr(sys.modules.get(client), name, None)
        if isinstance(kind, type):
            network.append(kind)
    return isinstance(exc, tuple(network))


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
