"""Each batch job planned by its single command's own planner (``plan_edit``, ``plan_texture``,
``plan_run`` with ``control.init_shape``, ``plan_generation``): once up front, where a bad file or
folder is a line's problem, and again in the worker, where the plan is run: one set of checks.
No torch at import or while planning.

Kept apart from ``input.py``: these import the control and amortize planners, and ``amortize``
reads its prompt files through ``input.py``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from magic3d.batch.sources import FROM_MODEL, JobSource
from magic3d.errors import InputError


def plan_line(prompt: str, source: JobSource | None, name: str, settings: dict[str, Any],
              seed: int | None = None, preset: str | None = None) -> Any:
    """The planned run of one job, by the planner its single command uses: ``(prompt, config, run
    folder)`` for the pipeline (``pipeline.run_planned``), or ``(model plan, prompt, run folder)``
    for an amortized model (``amortize.generate.run_from``). ``settings`` holds the batch's shared
    options (``RunDefaults`` as a dict); a line's ``seed`` and ``preset`` win over them."""
    out = settings["out"]
    seed = seed if seed is not None else settings.get("seed")
    preset = preset or settings.get("preset")
    overrides = list(settings.get("overrides") or ())
    device, prior = settings.get("device"), settings.get("prior")
    kind, path = (source.kind, source.path) if source is not None else ("", "")
    if kind == FROM_MODEL:
        from magic3d.amortize.generate import plan_generation

        # No refinement steps from a batch (0, always valid); the model's config, its prior checked against --prior.
        return plan_generation(prompt, path, out, 0, prior, device, overrides, name)
    if kind == "edit_from":
        from magic3d.control.plan import plan_edit

        return plan_edit(path, prompt, out, keep=source.keep or "none", overrides=overrides, seed=seed, device=device,
                         name=name)
    if kind == "texture_mesh":
        from magic3d.control.plan import plan_texture

        return plan_texture(path, prompt, out, preset, prior, overrides, seed, device, name=name)
    from magic3d.plan import plan_run

    if kind == "init_shape":  # what ``generate(init_shape=)`` and ``generate --init-shape`` set
        overrides.append(f"control.init_shape={json.dumps(path)}")
    elif kind:
        raise InputError(f"unknown job source {kind!r}")
    return plan_run(prompt, out, preset, prior, overrides, seed, device, name)


def source_check(settings: dict[str, Any]) -> Callable[[Any], None]:
    """What ``input.read_batch_file`` calls for each ``BatchItem`` with a source: planned as its job
    will be, nothing kept. With ``--from`` (``settings["from_model"]``) the model folder is checked
    here, once, before any line; each line's prompt then only against the model's prior."""
    model = check_model(settings["from_model"], settings) if settings.get("from_model") else None

    def check(item: Any) -> None:
        if item.source.kind == FROM_MODEL:
            from magic3d.amortize.generate import check_prompt

            check_prompt(model, item.prompt)  # what plan_generation checks of a prompt
            return
        plan_line(item.prompt, item.source, item.slug, settings, item.seed, item.preset)

    return check


def check_model(model_dir: str | Path, settings: dict[str, Any]) -> Any:
    """The ``--from`` model folder checked once for the whole batch (``plan_model``, and ``--prior``
    when given must be the model's); its plan, whose prior then checks every line's prompt."""
    from magic3d.amortize.generate import plan_model
    from magic3d.amortize.train import check_same_prior

    if settings.get("preset") is not None:
        raise InputError("--preset does not apply with --from: the model folder holds the config its assets use.")
    plan = plan_model(model_dir, settings.get("device"), list(settings.get("overrides") or ()))
    if settings.get("prior") is not None:
        check_same_prior(plan.record, settings["prior"], plan.model_dir)
    return plan
