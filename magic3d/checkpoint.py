"""Checkpoints: tensors in safetensors, everything else in a JSON sidecar holding the file's sha256.

Nothing is pickled, so loading a checkpoint can never run code. A checkpoint counts only when
both files are complete and the checksum matches; a truncated newest one is skipped with a
warning and the previous one used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from torch import Tensor

from magic3d.errors import ConfigError
from magic3d.storage import atomic_write_tensors, atomic_write_text

KEEP = 2
log = logging.getLogger(__name__)


@dataclass
class Checkpoint:
    stage: str
    step: int
    tensors: dict[str, Tensor]
    state: dict[str, Any]
    path: Path


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def checkpoint_path(ckpt_dir: Path, stage: str, step: int) -> Path:
    return ckpt_dir / f"{stage}-{step:06d}.safetensors"


def save_checkpoint(
    ckpt_dir: Path, stage: str, step: int, tensors: dict[str, Tensor], state: dict[str, Any], keep: int = KEEP
) -> Path:
    """Write tensors then the sidecar (the sidecar last: it is what makes the checkpoint count)."""
    path = checkpoint_path(ckpt_dir, stage, step)
    atomic_write_tensors(path, tensors)
    sidecar = {"stage": stage, "step": step, "sha256": sha256(path), "state": state}
    atomic_write_text(path.with_suffix(".json"), json.dumps(sidecar, indent=1))
    for old in list_checkpoints(ckpt_dir, stage)[:-keep]:
        old.with_suffix(".json").unlink(missing_ok=True)
        old.unlink(missing_ok=True)
    return path


def list_checkpoints(ckpt_dir: Path, stage: str) -> list[Path]:
    """Checkpoint files of ``stage``, oldest first."""
    return sorted(ckpt_dir.glob(f"{stage}-[0-9]*.safetensors")) if ckpt_dir.is_dir() else []


def usable_checkpoints(
    ckpt_dir: Path, stage: str, device: torch.device | str = "cpu",
    fits: dict[str, Tensor] | None = None, max_step: int | None = None,
) -> Iterator[Checkpoint]:
    """The stage's checkpoints that can be trusted, newest first. One counts when both files are
    whole, the checksum matches, its step is the one in its name and within ``max_step``, and its
    tensors have the names and shapes of ``fits`` (the model's own); others are skipped with a
    warning, so a damaged or tampered newest one falls back to the one before."""
    for path in reversed(list_checkpoints(ckpt_dir, stage)):
        try:
            sidecar = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
            if sidecar.get("sha256") != sha256(path):
                raise ValueError("checksum mismatch")
            step = sidecar.get("step")
            if isinstance(step, bool) or not isinstance(step, int) or f"{stage}-{step:06d}" != path.stem:
                raise ValueError(f"its record says step {step!r}, its name another")
            if max_step is not None and not 0 < step <= max_step:
                raise ValueError(f"step {step} is past the stage's {max_step} steps")
            if not isinstance(sidecar.get("state", {}), dict):
                raise ValueError("its state is not a mapping")
            tensors = load_file(str(path), device=str(device))
            mismatch = next((k for k, v in (fits or {}).items() if k not in tensors or tensors[k].shape != v.shape), None)
            if mismatch is not None:
                raise ValueError(f"{mismatch!r} is missing or has another shape than the model's")
        except Exception as exc:  # truncated, missing sidecar, bad JSON, tampered: fall back to an older one
            warn_skipped(path, exc)
            continue
        yield Checkpoint(stage, step, tensors, sidecar.get("state", {}), path)


def warn_skipped(path: Path, exc: BaseException) -> None:
    message = f"skipping damaged checkpoint {path.name} ({type(exc).__name__}: {exc}); trying the previous one"
    log.warning(message)
    warnings.warn(message, stacklevel=3)


def load_latest_checkpoint(
    ckpt_dir: Path, stage: str, device: torch.device | str = "cpu",
    fits: dict[str, Tensor] | None = None, max_step: int | None = None,
) -> Checkpoint | None:
    return next(usable_checkpoints(ckpt_dir, stage, device, fits, max_step), None)


def run_identity(prompt: str, config: dict) -> str:
    """A digest of what shapes a run's result (the prompt and the whole config, seed included)."""
    text = json.dumps({"prompt": prompt, "config": config}, sort_keys=True, allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:20]


def foreign_checkpoints(ckpt_dir: Path, made_by: str, stage: str = "*") -> list[Path]:
    """Checkpoints in ``ckpt_dir`` (of ``stage``, default all) whose sidecar does not say ``made_by`` (or says nothing)."""
    foreign = []
    for sidecar in sorted(Path(ckpt_dir).glob(f"{stage}-[0-9]*.json")) if Path(ckpt_dir).is_dir() else []:
        try:
            state = json.loads(sidecar.read_text(encoding="utf-8")).get("state", {})
        except (OSError, ValueError, AttributeError):
            continue  # a damaged sidecar makes its checkpoint unusable anyway (load_latest_checkpoint)
        if state.get("made_by") != made_by:
            foreign.append(sidecar.with_suffix(".safetensors"))
    return foreign


def check_made_by(ck: Checkpoint, made_by: str) -> None:
    if made_by and ck.state.get("made_by") != made_by:
        raise ConfigError(made_by_message(ck.path.parent))


def made_by_message(ckpt_dir: Path) -> str:
    return (f"The checkpoints in {str(ckpt_dir)!r} were made by another prompt, config or seed (or by a version "
            "that did not record it), so they are not resumed from; pass --restart to start over or choose another --out.")


def optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """An optimizer's state as flat tensors plus its JSON-able param groups."""
    sd = opt.state_dict()
    tensors = {}
    for index, slots in sd["state"].items():
        for name, value in slots.items():
            tensors[f"optim/{index}/{name}"] = torch.as_tensor(value)
    return tensors, {"param_groups": sd["param_groups"]}


def load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, Tensor], state: dict[str, Any]) -> None:
    slots: dict[int, dict[str, Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim/"):
            _, index, name = key.split("/", 2)
            slots.setdefault(int(index), {})[name] = value
    opt.load_state_dict({"state": slots, "param_groups": state["param_groups"]})


def generator_state(gen: torch.Generator) -> Tensor:
    return gen.get_state().clone()


def rng_state(generator: torch.Generator | None = None) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Every random number source a run may touch: the stage's own generator, torch's global CPU
    and CUDA generators, NumPy's and Python's; tensors for safetensors plus JSON-able parts."""
    tensors = {"rng/torch_cpu": torch.get_rng_state().clone()}
    if generator is not None:
        tensors["rng/generator"] = generator.get_state().clone()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda/{i}"] = state.clone()
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    tensors["rng/numpy_keys"] = torch.from_numpy(np.asarray(keys, dtype=np.uint32).astype(np.int64))
    version, internal, py_gauss = random.getstate()
    state = {"numpy": [str(kind), int(pos), int(has_gauss), float(gauss)],
             "python": [version, list(internal), py_gauss]}
    return tensors, state


def seed_host_rngs(seed: int, stage: str) -> None:
    """Seed the global sources ``rng_state`` saves (torch's, NumPy's, Python's) for a stage that
    starts fresh: unseeded, NumPy and Python draw from OS entropy, so the checkpoints of a run (and
    anything a library draws) would differ from process to process."""
    value = (int(seed) + zlib.crc32(stage.encode())) % 2**32
    torch.manual_seed(value)
    np.random.seed(value)
    random.seed(value)


def restore_rng_state(tensors: dict[str, Tensor], state: dict[str, Any], generator: torch.Generator | None = None) -> None:
    """Undo ``rng_state``; sources missing from an older checkpoint are left as they are."""
    if generator is not None and "rng/generator" in tensors:
        generator.set_state(tensors["rng/generator"].cpu())
    if "rng/torch_cpu" in tensors:
        torch.set_rng_state(tensors["rng/torch_cpu"].cpu())
    cuda = sorted((k for k in tensors if k.startswith("rng/cuda/")), key=lambda k: int(k.rsplit("/", 1)[1]))
    if cuda and torch.cuda.is_available():
        for key in cuda[: torch.cuda.device_count()]:
            torch.cuda.set_rng_state(tensors[key].cpu(), int(key.rsplit("/", 1)[1]))
    if "rng/numpy_keys" in tensors and "numpy" in state:
        kind, pos, has_gauss, gauss = state["numpy"]
        keys = tensors["rng/numpy_keys"].cpu().numpy().astype(np.uint32)
        np.random.set_state((kind, keys, int(pos), int(has_gauss), float(gauss)))
    if "python" in state:
        version, internal, py_gauss = state["python"]
        random.setstate((version, tuple(internal), py_gauss))


def resume_notice(run_dir: Path, steps: dict[str, int]) -> str | None:
    """One line saying where a re-run picks up, from the newest checkpoint of each stage (``steps``:
    the stages' step counts in order); None when there is nothing to resume from."""
    ckpt_dir = Path(run_dir) / "checkpoints"
    reached = {}
    for stage in steps:
        names = list_checkpoints(ckpt_dir, stage)
        reached[stage] = int(names[-1].stem.rsplit("-", 1)[1]) if names else 0
    started = [s for s, step in reached.items() if step > 0]
    if not started:
        return None
    stage = started[-1]
    if reached[stage] >= steps[stage]:
        later = [s for s in steps if list(steps).index(s) > list(steps).index(stage) and steps[s] > 0]
        where = f"after the {stage} stage (all {steps[stage]} steps done)" + (f"; {later[0]} starts" if later else "")
    else:
        where = f"the {stage} stage at step {reached[stage]} of {steps[stage]}"
    return f"Resuming {str(run_dir)!r} from its checkpoints: {where}."
