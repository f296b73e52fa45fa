"""Everything a user can get wrong about a run, checked before any work: prompt, config,
priors, device and output folder. Writes nothing.

It imports no torch (unless a GPU is asked for, which only torch can confirm) and no model
code: ``magic3d generate`` and ``magic3d batch`` refuse bad input in well under a second and
import ``magic3d.pipeline`` only once the run is planned.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from magic3d.config import Config, load_config
from magic3d.errors import InputError
from magic3d.guidance import check_prior_available, validate_prompt_for_prior
from magic3d.naming import clean_prompt, slugify
from magic3d.storage import check_run_folder

if TYPE_CHECKING:
    import torch


def plan_run(
    prompt: str,
    out: str | Path = "outputs",
    preset: str | None = None,
    prior: str | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    seed: int | None = None,
    device: str | None = None,
    name: str | None = None,
) -> tuple[str, Config, Path]:
    """Check everything cheap to check and return (prompt, config, run folder). Writes nothing."""
    if not str(out).strip():
        raise InputError("--out is empty; give the folder to write into, e.g. --out outputs.")
    text = clean_prompt(prompt)
    cfg = plan_config(preset, prior, tuple(overrides), seed, device)
    for model in dict.fromkeys((cfg.prior.id, cfg.prior.fine_id or cfg.prior.id)):
        validate_prompt_for_prior(text, model)
    run_dir = Path(out) / (name or slugify(text))
    check_run_folder(run_dir)
    return text, cfg, run_dir


def plan_config(
    preset: str | None = None,
    prior: str | None = None,
    overrides: tuple[str, ...] = (),
    seed: int | None = None,
    device: str | None = None,
) -> Config:
    """The checked config of a run (priors found, device present): the prompt-independent half of
    ``plan_run``, which a batch of many lines with the same settings needs only once."""
    extra = list(overrides)
    if prior is not None:
        extra = [f"prior.id={json.dumps(prior)}", *extra]
    if seed is not None:
        extra.append(f"runtime.seed={int(seed)}")
    if device is not None:
        extra.append(f"runtime.device={json.dumps(device)}")
    if preset is None:
        preset = "builtin" if (prior or "builtin") == "builtin" else "fast"
    cfg = load_config(preset, extra)
    for model in dict.fromkeys((cfg.prior.id, cfg.prior.fine_id or cfg.prior.id)):
        check_prior_available(model, cfg.prior)
    if cfg.runtime.device.startswith("cuda"):  # only a GPU asked for needs torch to be checked
        resolve_device(cfg.runtime.device)
    return cfg


NO_GPU = "--device cuda was asked for but no CUDA GPU is visible; use --device cpu."


def no_cuda_without_torch() -> bool:
    """True when no CUDA GPU can be visible, known without importing torch (seconds on a small
    CPU): CUDA_VISIBLE_DEVICES hides every device, or a Linux machine has no NVIDIA device node
    (WSL's GPUs appear as /dev/dxg). False means only torch can tell."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return True
    return sys.platform == "linux" and not any(os.path.exists(p) for p in ("/dev/nvidiactl", "/dev/nvidia0", "/dev/dxg"))


def resolve_device(name: str) -> torch.device:
    """``runtime.device`` as a torch device; InputError when it names a GPU this machine lacks."""
    # Once torch is loaded it answers at no cost (and is what the CUDA test harness patches).
    if name.startswith("cuda") and "torch" not in sys.modules and no_cuda_without_torch():
        raise InputError(NO_GPU)
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(NO_GPU)
    return torch.device(name)
