"""Checks of a pipeline folder's files that need no model load: the cheap half of loading a prior.

Weights are loaded from safetensors only: a component whose weights are pickles (``.bin``,
``.pt``, ``.ckpt``, ``.pth``) is refused, since unpickling can run code. A ``.safetensors`` file
is checked by its header alone (8-byte little-endian length, a JSON header whose tensors'
``data_offsets`` must cover the rest of the file exactly, as the safetensors library demands),
so a truncated multi-GB download is caught in milliseconds. Every JSON file of the components
a run loads must parse, and a sharded checkpoint's index must name shards that are there.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from pathlib import Path

from magic3d.errors import PriorError

# The folders each family's prior loads (see StableDiffusionPrior and DeepFloydPrior), and
# which of them hold network weights. The safety checker, watermarker etc. are never loaded.
COMPONENTS = {"sd": ("tokenizer", "text_encoder", "vae", "unet", "scheduler"),
              "if": ("tokenizer", "text_encoder", "unet", "scheduler")}
WEIGHTED = ("text_encoder", "vae", "unet")
PICKLE_SUFFIXES = (".bin", ".pt", ".ckpt", ".pth")
MAX_HEADER = 100_000_000  # the safetensors library's own limit on a header's length
DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2,
               "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


def is_pickle(name: str) -> bool:
    return name.endswith(PICKLE_SUFFIXES)


def pickle_only(names: Iterable[str]) -> str | None:
    """The first pickle weight file among a component's file names when it has no safetensors, else None."""
    names = sorted(names)
    if any(n.endswith(".safetensors") for n in names):
        return None
    return next((n for n in names if is_pickle(n)), None)


def pickle_only_error(component: str, file: str, name: str) -> PriorError:
    return PriorError(
        f"The {component} of prior {name!r} has only pickle weights ({file}), which magic3d refuses because "
        "unpickling can run code; re-save it as safetensors with save_pretrained(..., safe_serialization=True)."
    )


def refuse_pickle_only(folder: Path, component: str, name: str) -> None:
    """PriorError when the component folder's weights are pickles only."""
    if folder.is_dir():
        file = pickle_only(p.name for p in folder.iterdir() if p.is_file())
        if file is not None:
            raise pickle_only_error(component, file, name)


def refuse_pickle_only_listing(files: Iterable[str], name: str) -> None:
    """The same refusal from a hub repository's file listing (``unet/x.bin``...), before any download."""
    by_component: dict[str, list[str]] = {}
    for f in files:
        component, _, rest = f.partition("/")
        if component in WEIGHTED and rest and "/" not in rest:
            by_component.setdefault(component, []).append(rest)
    for component, names in sorted(by_component.items()):
        file = pickle_only(names)
        if file is not None:
            raise pickle_only_error(component, file, name)


def damaged(path: Path, why: str) -> PriorError:
    return PriorError(f"The prior file {str(path)!r} is damaged ({why}); download or save the model again, "
                      "or use --prior builtin.")


def safetensors_problem(path: Path) -> str | None:
    """Why ``path`` is not a whole safetensors file, from its header alone; None when it is."""
    try:
        with path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(8)
            if len(head) < 8:
                return f"it has {size} bytes, fewer than the 8 of a safetensors header length"
            n = int.from_bytes(head, "little")
            if n > MAX_HEADER or 8 + n > size:
                return f"its header length says {n} bytes but the file has {size}"
            raw = f.read(n)
    except OSError as exc:
        return f"it cannot be read: {exc.strerror or type(exc).__name__}"
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return "its header is not JSON"
    if not isinstance(header, dict):
        return "its header is not a JSON object"
    end = 0
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        try:
            begin, stop = (int(v) for v in entry["data_offsets"])
            shape = [int(d) for d in entry["shape"]]
            dtype = str(entry["dtype"])
        except (TypeError, KeyError, ValueError):
            return f"its header entry for {key[:60]!r} is malformed"
        if not 0 <= begin <= stop or (dtype in DTYPE_BYTES and stop - begin != math.prod(shape) * DTYPE_BYTES[dtype]):
            return f"its header entry for {key[:60]!r} has offsets that do not fit its shape"
        end = max(end, stop)
    if 8 + n + end > size:
        return f"truncated: its tensors need {8 + n + end} bytes, the file has {size}"
    if 8 + n + end < size:
        return f"it has {size - 8 - n - end} bytes after its last tensor"
    return None


def check_json(path: Path) -> object:
    """The parsed JSON file, or PriorError naming it."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise PriorError(f"The prior file {str(path)!r} is not valid JSON; download or save the model again, "
                         "or use --prior builtin.") from None
    except OSError as exc:
        raise damaged(path, f"it cannot be read: {exc.strerror or type(exc).__name__}") from None


def missing_part(folder: Path, family: str) -> str | None:
    """What a complete pipeline folder of ``family`` lacks (the first thing), or None."""
    for component in COMPONENTS[family]:
        part = folder / component
        if not part.is_dir():
            return f"its {component} folder"
        names = {p.name for p in part.iterdir()}
        if component in WEIGHTED:
            if "config.json" not in names:
                return f"{component}/config.json"
            if not any(n.endswith(".safetensors") or is_pickle(n) for n in names):
                return f"the {component} weight file"
            for index in sorted(n for n in names if ".safetensors.index" in n and n.endswith(".json")):
                shards = shard_names(part / index)
                gone = sorted(s for s in shards if s not in names)
                if gone:
                    return f"{component}/{gone[0]}"
        elif component == "scheduler" and "scheduler_config.json" not in names:
            return "scheduler/scheduler_config.json"
        elif not names:
            return f"the files of its {component} folder"
    return None


def shard_names(index: Path) -> set[str]:
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
        return {str(v) for v in data["weight_map"].values()}
    except (OSError, ValueError, UnicodeDecodeError, KeyError, TypeError, AttributeError):
        return set()  # check_pipeline_files names the broken index itself


def check_pipeline_files(folder: Path, family: str, name: str, complete: bool) -> None:
    """PriorError (one sentence naming the file) for any broken file of the components a run
    loads: JSON that doesn't parse, a damaged safetensors file, pickle-only weights. With
    ``complete`` a missing component, config or weight file is refused too; without it (a hub
    snapshot that the load will finish downloading) only the files present are checked."""
    if complete:
        gone = missing_part(folder, family)
        if gone is not None:
            raise PriorError(f"The prior folder {name!r} is incomplete ({gone} is missing); download or save "
                             "the whole pipeline again, or use --prior builtin.")
    for component in COMPONENTS[family]:
        part = folder / component
        if not part.is_dir():
            continue
        entries = sorted(part.iterdir())
        for path in entries:
            if path.is_symlink() and not path.exists():  # a hub snapshot whose blob was deleted
                raise damaged(path, "it is a link to a file that is gone")
        files = [p for p in entries if p.is_file()]
        for path in files:
            if path.suffix == ".json":
                data = check_json(path)
                if path.name.endswith("config.json") and not isinstance(data, dict):
                    raise damaged(path, "it is not a JSON object")
                if ".safetensors.index" in path.name and not (
                        isinstance(data, dict) and isinstance(data.get("weight_map"), dict)):
                    raise damaged(path, "it has no weight_map")
        if component in WEIGHTED:
            refuse_pickle_only(part, component, name)
            for path in files:
                if path.suffix == ".safetensors":
                    why = safetensors_problem(path)
                    if why is not None:
                        raise damaged(path, why)
