"""``magic3d generate PROMPT --from MODEL_DIR``: one forward pass of the amortized model, then the
pipeline's mesh extraction, bake and export.

A prompt of the training set takes its conditioning from the model folder and loads no prior;
another prompt the prior accepts is encoded by it and recorded as ``"unseen": true``.
``refine_steps`` continues the model on that one prompt for a few steps (LATTE3D's test-time
optimisation) in the run folder before extraction; the model folder is never written.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from magic3d.amortize.config import AmortizedConfig, load_amortized_config
from magic3d.amortize.train import CONDITIONING, RECORD, STAGE, TEXTURE_STAGE, read_model_record
from magic3d.errors import InputError, RunError
from magic3d.progress import ProgressFn, silent


@dataclass
class ModelPlan:
    """A checked model folder: its record and config, no tensors yet."""

    model_dir: Path
    record: dict[str, Any]
    cfg: AmortizedConfig

    @property
    def prior_id(self) -> str:
        return self.cfg.run.prior.id

    def seen(self, text: str) -> bool:
        return text in self.record["prompts"]


def plan_model(model_dir: str | Path, device: str | None = None, overrides: tuple[str, ...] | list[str] = ()) -> ModelPlan:
    """The model folder's record and config, checked without torch; InputError for anything else."""
    model_dir = Path(model_dir)
    record = read_model_record(model_dir) if model_dir.is_dir() else None
    if not record or not isinstance(record.get("prompts"), list) or "prior" not in record:
        raise InputError(f"{str(model_dir)!r} is not an amortized model folder (no readable {RECORD}); "
                         "make one with magic3d amortize PROMPTS --out MODEL_DIR.")
    if record.get("status") != "done":
        raise InputError(f"The model in {str(model_dir)!r} has not finished training; run the same "
                         "magic3d amortize command again to resume it.")
    extra = list(record.get("overrides") or [])
    if device is not None:
        extra.append(f"runtime.device={json.dumps(device)}")
    cfg = load_amortized_config(record.get("preset"), [*extra, *overrides])
    return ModelPlan(model_dir, record, cfg)


def check_prompt(plan: ModelPlan, text: str) -> None:
    from magic3d.guidance import validate_prompt_for_prior

    validate_prompt_for_prior(text, plan.prior_id)


def load_conditioned(plan: ModelPlan, device: Any):
    """The model's ``AmortizedModel`` (no prior) with its trained weights, and the seen prompts' table."""
    import torch
    from safetensors.torch import load_file

    from magic3d.amortize.model import AmortizedModel, PromptSet
    from magic3d.amortize.texture import TextureStageModel
    from magic3d.checkpoint import load_latest_checkpoint

    table = load_file(str(plan.model_dir / CONDITIONING))["cond"].to(device)
    ck = load_latest_checkpoint(plan.model_dir / "checkpoints", STAGE, "cpu")
    if ck is None:
        raise RunError(f"No {STAGE} checkpoint in {str(plan.model_dir)!r}; train the model again: "
                       "magic3d amortize PROMPTS --out MODEL_DIR --restart.")
    with torch.random.fork_rng(devices=[]):
        model = AmortizedModel(plan.cfg, None, PromptSet(list(plan.record["prompts"]), table), device,
                               plan.cfg.run.runtime.seed)
    model.load_state_tensors(ck.tensors)
    if plan.record.get("texture_steps"):
        texture = load_latest_checkpoint(plan.model_dir / "checkpoints", TEXTURE_STAGE, "cpu")
        if texture is None:
            raise RunError(f"No {TEXTURE_STAGE} checkpoint in {str(plan.model_dir)!r} although its record says the "
                           "stage ran; train the model again: magic3d amortize PROMPTS --out MODEL_DIR --restart.")
        stage = TextureStageModel(plan.cfg, None, model, device)
        stage.load_state_tensors(texture.tensors)
        model.texture_net = stage.net.eval()
    return model, table


def conditioning_of(plan: ModelPlan, texts: list[str], table, device: Any, prior: Any = None):
    """Each text's pooled conditioning "P D": the model's own row when seen, else the prior's (loaded here if needed)."""
    import torch

    from magic3d.amortize.model import encode_conditioning

    unseen = [t for t in texts if not plan.seen(t)]
    encoded = {}
    if unseen:
        prior = prior or load_model_prior(plan, device)
        rows = encode_conditioning(unseen, prior, plan.cfg, None).to(device)
        encoded = dict(zip(unseen, rows, strict=True))
    prompts = plan.record["prompts"]
    return torch.stack([table[prompts.index(t)] if plan.seen(t) else encoded[t] for t in texts]), prior


def load_model_prior(plan: ModelPlan, device: Any) -> Any:
    from magic3d.pipeline import load_first_prior

    return load_first_prior(plan.cfg.run, device)


def refine(model: Any, plan: ModelPlan, text: str, prior: Any, run_dir: Path, steps: int, progress: ProgressFn) -> Any:
    """``steps`` more SDS steps of the whole model on ``text`` alone, checkpointed in ``run_dir``.

    One render a step, as the per-prompt presets take: training's ``prompts_per_step`` would only
    render this one prompt several times a step, at several times the cost."""
    import dataclasses

    import torch

    from magic3d.amortize.model import AmortizedModel, PromptSet
    from magic3d.stages.loop import LoopSpec, run_loop

    device = model.device
    prompts = PromptSet.build([text], prior, plan.cfg, run_dir / "cache")
    with torch.random.fork_rng(devices=[]):
        cfg = dataclasses.replace(plan.cfg, amortize=dataclasses.replace(plan.cfg.amortize, prompts_per_step=1))
        single = AmortizedModel(cfg, prior, prompts, device, plan.cfg.run.runtime.seed)
    single.load_state_tensors(model.state_tensors())
    single.texture_net = model.texture_net  # the colour correction holds for the refined field too
    spec = LoopSpec("refine", steps, plan.cfg.amortize.checkpoint_every, 0, device_type=device.type)
    run_loop(single, spec, run_dir, torch.Generator().manual_seed(plan.cfg.run.runtime.seed), progress, resume=False)
    return single


def fine_stage(field: Any, prior: Any, text: str, plan: ModelPlan, run_dir: Path, device: Any,
               progress: ProgressFn) -> Any:
    """``fine.steps`` of the fine stage (DMTet and texture under SDS) started from the model's field."""
    from magic3d.pipeline import out_of_memory_advice
    from magic3d.prompts import ViewPrompts
    from magic3d.stages.fine import run_fine
    from magic3d.stages.losses import SDSLoss

    run = plan.cfg.run
    loss = SDSLoss(prior, ViewPrompts.build(text, prior, run.prior, run_dir / "cache"), run.fine.sds)
    with out_of_memory_advice("fine", run, plan.prior_id):  # as a per-prompt run's fine stage
        return run_fine(field, loss, run.fine, run_dir, device, run.runtime.seed, progress=progress, resume=False,
                        precision=run.runtime.precision)


def plan_generation(
    prompt: str, model_dir: str | Path, out: str | Path = "outputs", refine_steps: int = 0, prior: str | None = None,
    device: str | None = None, overrides: tuple[str, ...] | list[str] = (), name: str | None = None,
) -> tuple[ModelPlan, str, Path]:
    """(model, prompt, run folder), every check done without torch: the model folder, ``prior``
    (when given, it must be the model's), the prompt against the model's prior, the output folder."""
    from magic3d.amortize.train import check_same_prior
    from magic3d.naming import clean_prompt, slugify
    from magic3d.storage import check_run_folder, ensure_writable_dir

    if not str(out).strip():
        raise InputError("--out is empty; give the folder to write into, e.g. --out outputs.")
    if refine_steps < 0:
        raise InputError(f"--refine-steps must be 0 or more, not {refine_steps}.")
    text = clean_prompt(prompt)
    plan = plan_model(model_dir, device, overrides)
    if prior is not None:
        check_same_prior(plan.record, prior, plan.model_dir)
    check_prompt(plan, text)
    run_dir = Path(out) / (name or slugify(text))
    check_run_folder(run_dir)
    ensure_writable_dir(Path(out))
    return plan, text, run_dir


def generate_from(
    prompt: str, model_dir: str | Path, out: str | Path = "outputs", refine_steps: int = 0, prior: str | None = None,
    device: str | None = None, overrides: tuple[str, ...] | list[str] = (), name: str | None = None,
    progress: ProgressFn = silent,
) -> Any:
    """The asset of ``prompt`` from the amortized model in ``model_dir``, written under ``out/<slug>/``."""
    plan, text, run_dir = plan_generation(prompt, model_dir, out, refine_steps, prior, device, overrides, name)
    return run_from(plan, text, run_dir, refine_steps, progress)


def run_from(plan: ModelPlan, text: str, run_dir: Path, refine_steps: int, progress: ProgressFn,
             model_loader: Callable[[ModelPlan, Any], Any] | None = None,
             prior_loader: Callable[[ModelPlan, Any], Any] | None = None) -> Any:
    """Run the planned generation. ``model_loader`` / ``prior_loader`` replace ``load_conditioned`` /
    ``load_model_prior``: a batch worker's keep the model and prior loaded from one job to the next.

    run.json's ``timings`` (wall) and ``cpu_timings`` keep each phase's own seconds, ``forward``
    being the model's: the mapping network and every evaluation of the conditioned field that
    extraction and baking make (``magic3d.timing``)."""
    import torch

    from exporters.common import make_dirs, sweep_temp_files
    from magic3d.amortize.texture import model_surface
    from magic3d.bake import bake
    from magic3d.export import write_outputs
    from magic3d.pipeline import RunResult, versions
    from magic3d.plan import resolve_device
    from magic3d.storage import atomic_write_text, confined
    from magic3d.timing import PhaseTimes, TimedField

    run = plan.cfg.run
    device = resolve_device(run.runtime.device)
    times = PhaseTimes()
    with times.phase("load"):
        model, table = (model_loader or load_conditioned)(plan, device)
        needs_prior = refine_steps or run.fine.steps > 0 or not plan.seen(text)
        prior = (prior_loader or load_model_prior)(plan, device) if needs_prior else None
        cond, prior = conditioning_of(plan, [text], table, device, prior)
    with confined(run_dir.parent):
        make_dirs(run_dir)
        sweep_temp_files(run_dir)
        if refine_steps:
            with times.phase("refine"):
                model = refine(model, plan, text, prior, run_dir, refine_steps, progress)
                cond = model.conditioning
        with times.phase("forward"), torch.no_grad():
            field = TimedField(model.conditioned.at(cond[0]).eval(), times)
        if run.fine.steps > 0:  # Magic3D's second stage on the model's coarse field: sharper edges, a texture of its own
            with times.phase("fine"):
                fine = fine_stage(field, prior, text, plan, run_dir, device, progress)
        else:
            with times.phase("mesh"):
                fine = model_surface(model, field, cond[0], run.fine, device)
        with times.phase("bake"):
            mesh = bake(fine.vertices, fine.faces, fine.color_fn, run.bake)
        with times.phase("export"):
            files = write_outputs(mesh, run_dir, text, run, times)
        metrics = {"fine": fine.metrics, "faces": int(fine.faces.shape[0]), "surface": mesh.metadata.get("surface", {})}
        timings = {k: round(v, 4) for k, v in times.wall.items()}
        record = {"prompt": text, "from": str(plan.model_dir), "prior": plan.prior_id, "unseen": not plan.seen(text),
                  "refine_steps": refine_steps, "seed": run.runtime.seed, "device": str(device), "status": "done",
                  "config": plan.cfg.to_dict(), "files": {k: str(p.relative_to(run_dir)) for k, p in files.items()},
                  "metrics": metrics, "timings": timings, "cpu_timings": {k: round(v, 4) for k, v in times.cpu.items()},
                  "versions": versions(), "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        atomic_write_text(run_dir / "run.json", json.dumps(record, indent=2))
    return RunResult(run_dir, files, metrics, timings)
