"""The one optimisation loop both stages run: step, Adam, checkpoints, resume, previews, NaN guard.

A stage supplies a ``Trainable`` (what to optimise and how one step's loss is computed); the
loop owns everything that makes a long run safe: resuming bit-identically from the newest valid
checkpoint (parameters, optimizer moments, RNG state, step), and rolling back once, at half the
learning rate, when the loss or the parameters stop being finite.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch
from torch import Tensor

from magic3d.checkpoint import (
    check_made_by,
    load_optimizer,
    optimizer_tensors,
    restore_rng_state,
    rng_state,
    save_checkpoint,
    seed_host_rngs,
    usable_checkpoints,
    warn_skipped,
)
from magic3d.errors import RunError
from magic3d.progress import ProgressFn, silent

# One loss function contract for every stage: rgb "B H W 3" in [0, 1] -> (loss, metrics).
LossFn = Callable[..., tuple[Tensor, dict[str, float]]]
log = logging.getLogger(__name__)


class Trainable(Protocol):
    """What a stage hands the loop. ``param_groups`` are Adam's (each with its own "lr");
    ``state_tensors`` is everything besides the optimizer a resume needs (parameters, buffers,
    occupancy grids); ``step`` renders a camera batch and returns the scalar loss to minimise.
    ``preview`` returns an "H W 3" uint8 image of a few fixed views."""

    def param_groups(self) -> list[dict[str, Any]]: ...

    def state_tensors(self) -> dict[str, Tensor]: ...

    def load_state_tensors(self, tensors: dict[str, Tensor]) -> None: ...

    def step(self, step: int, ratio: float, generator: torch.Generator) -> tuple[Tensor, dict[str, float]]: ...

    def after_step(self, step: int, generator: torch.Generator) -> None: ...

    def preview(self) -> np.ndarray: ...


Precision = Literal["auto", "fp32", "bf16", "fp16"]


def autocast_dtype(precision: Precision, device: torch.device) -> torch.dtype | None:
    """The dtype the fields and renderers compute in under autocast, None for plain fp32.

    ``auto``: bf16 on CUDA (fp16 where the GPU lacks bf16), fp32 on CPU. Autocast runs only
    matrix products and convolutions in low precision; exponentials, sums and compositing stay fp32.
    """
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if precision == "bf16" else torch.float16


@dataclass
class LoopSpec:
    stage: str
    steps: int
    checkpoint_every: int
    preview_every: int = 0
    device_type: str = "cpu"
    autocast: torch.dtype | None = None  # see autocast_dtype; fp16 adds a gradient scaler
    # What made this run (``magic3d.checkpoint.run_identity``): stored in every checkpoint, and a
    # checkpoint made by anything else is never resumed from. "" (tests, benchmarks): not checked.
    made_by: str = ""
    lr_drop_on_nan: float = 0.5
    betas: tuple[float, float] = (0.9, 0.99)
    eps: float = 1e-15  # hash tables see rare, tiny gradients: Instant-NGP's epsilon keeps them moving


@dataclass
class LoopResult:
    steps: int
    metrics: dict[str, float] = field(default_factory=dict)
    resumed_from: int = 0


def run_loop(
    model: Trainable, spec: LoopSpec, run_dir: Path, generator: torch.Generator,
    progress: ProgressFn = silent, resume: bool = True,
) -> LoopResult:
    ckpt_dir = run_dir / "checkpoints"
    opt = torch.optim.Adam(model.param_groups(), betas=spec.betas, eps=spec.eps)
    base_lrs = [g["lr"] for g in opt.param_groups]
    start, metrics, lr_scale, nan_events = 0, {}, 1.0, 0
    # Loaded on the CPU: the optimizer moves moments to the parameters' device itself and wants
    # Adam's step counters left on the CPU.
    # The last state known to be finite, in memory: for rollback before the first checkpoint, and
    # to undo a checkpoint that fails half-way through being restored.
    good = snapshot(model, opt, generator, 0, 1.0)
    for ck in usable_checkpoints(ckpt_dir, spec.stage, "cpu", model.state_tensors(), spec.steps) if resume else ():
        check_made_by(ck, spec.made_by)
        try:
            model.load_state_tensors(ck.tensors)
            load_optimizer(opt, ck.tensors, ck.state)
            restore_rng_state(ck.tensors, ck.state.get("rng", {}), generator)
            start, metrics = ck.step, dict(ck.state.get("metrics", {}))
            lr_scale, nan_events = float(ck.state.get("lr_scale", 1.0)), int(ck.state.get("nan_events", 0))
        except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as exc:  # a tampered sidecar
            warn_skipped(ck.path, exc)
            restore(model, opt, generator, good)
            start, metrics, lr_scale, nan_events = 0, {}, 1.0, 0
            continue
        good = snapshot(model, opt, generator, start, lr_scale)
        break
    resumed_from = start
    if start == 0:
        seed_host_rngs(generator.initial_seed(), spec.stage)

    scaler = grad_scaler(spec)
    step = start
    while step < spec.steps:
        loss, step_metrics = optimise_step(model, opt, scaler, spec, step, generator)
        # One host read per step: health, loss and metrics travel together, so the GPU runs
        # ahead until here. A non-finite step is undone below by the rollback, optimizer included.
        healthy, values = read_step(loss, step_metrics, opt)
        if not healthy:
            nan_events += 1
            if nan_events > 1:
                raise RunError(
                    f"Training diverged twice in the {spec.stage} stage (non-finite loss or parameters at step "
                    f"{step + 1}, even after a rollback at half the learning rate); lower {spec.stage}.lr or "
                    f"{spec.stage}.sds.guidance_scale with --set and run again with --restart."
                )
            log.warning("%s step %d: non-finite loss or parameters; rolling back to step %d at lr x%g",
                        spec.stage, step + 1, good["step"], lr_scale * spec.lr_drop_on_nan)
            lr_scale *= spec.lr_drop_on_nan
            step = restore(model, opt, generator, good)
            for group, base in zip(opt.param_groups, base_lrs, strict=True):
                group["lr"] = base * lr_scale
            continue
        metrics = values
        model.after_step(step, generator)
        step += 1
        progress(spec.stage, step, spec.steps, values["loss"])
        if step % max(spec.checkpoint_every, 1) == 0 or step == spec.steps:
            tensors, opt_state = optimizer_tensors(opt)
            rng_tensors, rng_json = rng_state(generator)
            state = {**opt_state, "metrics": metrics, "lr_scale": lr_scale, "nan_events": nan_events, "rng": rng_json,
                     "made_by": spec.made_by}
            save_checkpoint(ckpt_dir, spec.stage, step, {**model.state_tensors(), **tensors, **rng_tensors}, state)
            good = snapshot(model, opt, generator, step, lr_scale)
        if spec.preview_every and (step % spec.preview_every == 0 or step == spec.steps):
            write_preview(run_dir / "previews" / f"{spec.stage}-{step:06d}.png", model.preview())
    final = run_dir / "previews" / f"{spec.stage}-{spec.steps:06d}.png"
    if spec.preview_every and spec.steps > 0 and not final.is_file():
        write_preview(final, model.preview())  # a kill after the last checkpoint lost it: the resume owes it
    return LoopResult(steps=step, metrics=metrics, resumed_from=resumed_from)


def grad_scaler(spec: LoopSpec) -> torch.amp.GradScaler | None:
    # fp16 gradients underflow without loss scaling; bf16 has fp32's range and needs none.
    return torch.amp.GradScaler(spec.device_type) if spec.autocast == torch.float16 else None


def optimise_step(
    model: Trainable, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None, spec: LoopSpec,
    step: int, generator: torch.Generator,
) -> tuple[Tensor, dict[str, Tensor | float]]:
    """One step's forward (under the stage's autocast), backward and Adam update; no host read."""
    with autocast(spec):
        loss, metrics = model.step(step, step / max(spec.steps, 1), generator)
    opt.zero_grad(set_to_none=True)
    if scaler is None:
        loss.backward()
        opt.step()
    else:
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    return loss, metrics


def autocast(spec: LoopSpec) -> contextlib.AbstractContextManager:
    if spec.autocast is None:
        return contextlib.nullcontext()
    return torch.autocast(spec.device_type, dtype=spec.autocast)


def read_step(
    loss: Tensor, metrics: dict[str, Tensor | float], opt: torch.optim.Optimizer
) -> tuple[bool, dict[str, float]]:
    """(loss and every parameter finite, {"loss": ..., **metrics} as floats) in one device-to-host read."""
    params = [p for g in opt.param_groups for p in g["params"]]
    finite = torch.stack([torch.isfinite(loss.detach()).all(), *(torch.isfinite(p.detach()).all() for p in params)]).all()
    names = [k for k, v in metrics.items() if isinstance(v, Tensor)]
    row = torch.stack([finite.float(), loss.detach().float().reshape(()), *(metrics[k].detach().float().reshape(()) for k in names)])
    flag, loss_value, *rest = row.tolist()
    values = {k: float(v) for k, v in metrics.items() if not isinstance(v, Tensor)}
    values.update(zip(names, rest, strict=True))
    return bool(flag) and math.isfinite(loss_value), {**values, "loss": loss_value}


def snapshot(model: Trainable, opt: torch.optim.Optimizer, gen: torch.Generator, step: int, lr_scale: float) -> dict:
    tensors, opt_state = optimizer_tensors(opt)
    return {"model": {k: v.detach().clone() for k, v in model.state_tensors().items()},
            "optim": ({k: v.clone() for k, v in tensors.items()}, opt_state), "rng": gen.get_state().clone(),
            "step": step}


def restore(model: Trainable, opt: torch.optim.Optimizer, gen: torch.Generator, good: dict) -> int:
    model.load_state_tensors(good["model"])
    tensors, opt_state = good["optim"]
    if tensors:
        load_optimizer(opt, tensors, opt_state)
    else:
        opt.state.clear()
    gen.set_state(good["rng"])
    return good["step"]


def write_preview(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    from magic3d.storage import atomic_path

    with atomic_path(path) as tmp:  # makes the folder, never through a link
        Image.fromarray(image).save(tmp, format="PNG")
