"""What a batch job starts from besides its prompt: a finished run to edit (``"edit_from"``), the
user's shape (``"init_shape"``), the user's mesh to texture (``"texture_mesh"``), or an amortized
model (``magic3d batch --from MODEL_DIR``). Nothing: Magic3D's blob, as ``magic3d generate``.

A source is a ``JobSource``: its kind and its path, made absolute (a line's relative path is taken
from the batch file's folder, so a resumed batch finds the same file from any working directory).
It is part of the job in the manifest: a line whose source changed is another job, never resumed
into.

Lines are planned here with the single commands' own planners (``plan_edit``, ``plan_texture``,
``plan_run`` with ``control.init_shape``, ``plan_generation``), once up front, where a bad file
or folder is a line's problem, and again in the worker, where the plan is run: one set of checks.
No torch at import or while planning.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from magic3d.control.plan import KEEPS
from magic3d.errors import InputError

CONTROL_KEYS = ("edit_from", "init_shape", "texture_mesh")  # JSONL keys; at most one a line
FROM_MODEL = "from_model"  # the batch's --from, the one source no line names
LABELS = {"edit_from": "edited from", "init_shape": "init shape", "texture_mesh": "textured",
          FROM_MODEL: "from model"}


@dataclass(frozen=True)
class JobSource:
    kind: str  # one of CONTROL_KEYS, or FROM_MODEL
    path: str  # absolute
    keep: str | None = None  # an edit's: what it keeps of its source (KEEPS; None: plan_edit's default)

    def to_json(self) -> str:
        return json.dumps({k: v for k, v in asdict(self).items() if v is not None}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | None) -> JobSource | None:
        return cls(**json.loads(text)) if text else None

    def describe(self) -> str:
        """``"edited from /runs/a-blue-torus"``: what the gallery says a job started from."""
        keep = f" (keep {self.keep})" if self.keep else ""
        return f"{LABELS.get(self.kind, self.kind)} {self.path}{keep}"


def line_source(row: dict[str, Any], folder: Path) -> JobSource | None:
    """The control key of a parsed JSONL line as a source, its path made absolute; InputError when
    the line gives more than one, a value that is no path, or a key its kind does not take."""
    given = [k for k in CONTROL_KEYS if row.get(k) is not None]
    if len(given) > 1:
        raise InputError(f"give at most one of {', '.join(map(json.dumps, given))}: a job starts from one source")
    kind = given[0] if given else None
    keep = row.get("keep")
    if keep is not None and kind != "edit_from":
        raise InputError('"keep" applies only to an "edit_from" line')
    if kind is None:
        return None
    value = row[kind]
    if not isinstance(value, str) or not value.strip():
        raise InputError(f'"{kind}" must be a non-empty path (a relative one is taken from the batch file\'s folder)')
    if kind == "edit_from":
        if keep is not None and keep not in KEEPS:
            raise InputError(f'"keep" must be one of {", ".join(map(json.dumps, KEEPS))}, not {json.dumps(keep)[:40]}')
        if row.get("preset") is not None:
            raise InputError('"preset" does not apply to an "edit_from" line: an edit runs on its source run\'s config')
    return JobSource(kind, os.path.abspath(Path(folder) / Path(value).expanduser()), keep)


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


def check_source(item: Any, settings: dict[str, Any], model: Any = None) -> None:
    """A ``BatchItem`` with a source planned as its job will be (nothing kept); ``model``: the
    ``--from`` folder's plan (``check_model``), which only the prompt is checked against here."""
    if item.source.kind == FROM_MODEL:
        from magic3d.amortize.generate import check_prompt

        check_prompt(model, item.prompt)  # what plan_generation checks of a prompt; the folder was checked once
        return
    plan_line(item.prompt, item.source, item.slug, settings, item.seed, item.preset)


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
