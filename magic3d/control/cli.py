"""``magic3d texture`` and ``magic3d edit``: typer commands over ``magic3d.control.plan``.

``magic3d.cli`` calls ``register(app)``. Nothing here imports torch: bad input is refused by the
planner before the pipeline is imported.
"""

from __future__ import annotations

from typing import Annotated

import typer

from magic3d.command import JsonOpt, run_command
from magic3d.control.plan import EDIT_LR_SCALE, EDIT_STEPS

OutOpt = Annotated[str, typer.Option("--out", "-o", help="Output folder; the run goes in a folder under it.")]
PresetOpt = Annotated[str | None, typer.Option("--preset", "-p", help="Preset name or a YAML file.")]
PriorOpt = Annotated[str | None, typer.Option("--prior", help="Diffusion prior: 'builtin', a hub id or a folder.")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", "-s", help="Config override KEY=VALUE. Repeatable.")]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Random seed (default: runtime.seed).")]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="cpu, cuda, cuda:N or auto.")]
RestartOpt = Annotated[bool, typer.Option("--restart", help="Ignore checkpoints and start over.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars; print only result paths.")]


def register(app: typer.Typer) -> None:
    """Add the ``texture`` and ``edit`` commands to ``app``."""
    app.command("texture")(texture)
    app.command("edit")(edit)


def texture(
    file: Annotated[str, typer.Argument(help="A closed mesh: .glb/.gltf/.obj/.ply/.stl/.usd/.usda/.usdc/.usdz.")],
    prompt: Annotated[str, typer.Argument(help="What it should look like, e.g. \"a red cube\".")],
    out: OutOpt = "outputs",
    preset: PresetOpt = None,
    prior: PriorOpt = None,
    overrides: SetOpt = None,
    seed: SeedOpt = None,
    device: DeviceOpt = None,
    size_m: Annotated[float | None, typer.Option("--size", help="Largest side in metres (default: the mesh's own).")] = None,
    restart: RestartOpt = False,
    quiet: QuietOpt = False,
    json_events: JsonOpt = False,
) -> None:
    """Texture the mesh in FILE from PROMPT, keeping its geometry exactly (the fine stage's texture only)."""
    from magic3d.control.plan import plan_texture

    run_command(lambda: plan_texture(file, prompt, out, preset, prior, overrides or [], seed, device, size_m),
                prompt, out, restart, quiet, json_events)


def edit(
    run_dir: Annotated[str, typer.Argument(help="A finished run folder (holding run.json).")],
    prompt: Annotated[str, typer.Argument(help="The new prompt, e.g. \"a red torus\".")],
    out: OutOpt = "outputs",
    keep: Annotated[str, typer.Option("--keep", help="geometry: only the appearance changes; none: shape too.")] = "none",
    steps: Annotated[int, typer.Option("--steps", help="Coarse steps of fine-tuning the source's field.")] = EDIT_STEPS,
    lr_scale: Annotated[float, typer.Option("--lr-scale", help="Of the source's coarse learning rate.")] = EDIT_LR_SCALE,
    overrides: SetOpt = None,
    seed: SeedOpt = None,
    device: DeviceOpt = None,
    restart: RestartOpt = False,
    quiet: QuietOpt = False,
    json_events: JsonOpt = False,
) -> None:
    """Edit the finished run in RUN_DIR with PROMPT (Magic3D's prompt editing); the source is never modified."""
    from magic3d.control.plan import plan_edit

    run_command(lambda: plan_edit(run_dir, prompt, out, keep, steps, lr_scale, overrides or [], seed, device),
                prompt, out, restart, quiet, json_events)
