"""The ``magic3d`` command: a thin typer front over ``magic3d.pipeline`` and friends.

Every error meant for people (``Magic3DError``) is printed as one line and exits with code 2.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from magic3d.amortize.cli import register as register_amortize
from magic3d.batch.cli import register as register_batch
from magic3d.batch.gallery_cli import register as register_gallery
from magic3d.command import JsonOpt
from magic3d.console import run_app
from magic3d.control.cli import register as register_control

# Plain click help (rich_markup_mode=None): the rich formatter shows every flag as "<bool>",
# which reads as if a value were needed ("--restart true" is refused).
app = typer.Typer(
    rich_markup_mode=None,
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Text to textured 3D assets (USD, USDZ, GLB, OBJ) by score distillation.",
)

PresetOpt = Annotated[
    str | None, typer.Option("--preset", "-p", help="Preset name (fast, paper, builtin, …) or a YAML file.")
]
PriorOpt = Annotated[
    str | None,
    typer.Option(
        "--prior",
        help="Diffusion prior: 'builtin' (offline, CPU), a hub id such as "
        "stabilityai/stable-diffusion-2-1-base, or a local diffusers folder.",
    ),
]
SetOpt = Annotated[
    list[str] | None, typer.Option("--set", "-s", help="Config override KEY=VALUE, e.g. coarse.steps=2000. Repeatable.")
]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Random seed (default: runtime.seed).")]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="cpu, cuda, cuda:N or auto.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars; print only result paths.")]


@app.command()
def generate(
    prompt: Annotated[str, typer.Argument(help="What to make, e.g. \"a blue torus\".")],
    # A string, not a Path: Path("") is ".", and an empty --out must be refused, not mean here.
    out: Annotated[str, typer.Option("--out", "-o", help="Output folder; the run goes in OUT/<slug>/.")] = "outputs",
    preset: PresetOpt = None,
    prior: PriorOpt = None,
    overrides: SetOpt = None,
    seed: SeedOpt = None,
    device: DeviceOpt = None,
    restart: Annotated[bool, typer.Option("--restart", help="Ignore checkpoints and start over.")] = False,
    quiet: QuietOpt = False,
    json_events: JsonOpt = False,
    init_shape: Annotated[str | None, typer.Option("--init-shape", help="A closed mesh file the coarse density "
                                                   "starts from instead of the blob.")] = None,
    from_model: Annotated[str | None, typer.Option("--from", help="An amortized model folder (magic3d amortize): "
                                                   "one forward pass instead of optimising.")] = None,
    refine_steps: Annotated[int, typer.Option("--refine-steps", help="With --from: SDS steps on this prompt "
                                              "alone before extraction.")] = 0,
) -> None:
    """Optimise a 3D asset for PROMPT and write it in the configured formats."""
    import json

    from magic3d.command import run_command

    if from_model is not None:
        from magic3d.amortize.cli import generate_from_model

        return generate_from_model(prompt, from_model, out, refine_steps, prior, device, overrides, quiet)
    options = dict(preset=preset, prior=prior, overrides=overrides or [], seed=seed, device=device)
    if init_shape is not None:
        options["overrides"] = [*options["overrides"], f"control.init_shape={json.dumps(init_shape)}"]
    from magic3d.plan import plan_run

    # Every check (magic3d.plan, no torch): bad input is refused in well under a second, and the
    # pipeline is imported only for a run that will happen.
    run_command(lambda: plan_run(prompt, out=out, **options), prompt, out, restart, quiet, json_events)


@app.command()
def export(
    run_dir: Annotated[Path, typer.Argument(help="A finished run folder (holding run.json).")],
    formats: Annotated[
        str | None, typer.Option("--format", "-f", help="Comma-separated: usdc,usda,usdz,glb,obj.")
    ] = None,
    up_axis: Annotated[str | None, typer.Option("--up-axis", help="Y (default) or Z.")] = None,
    size_m: Annotated[float | None, typer.Option("--size", help="Largest side in metres.")] = None,
) -> None:
    """Re-export a finished run in other formats, without optimising again."""
    from magic3d.export import reexport

    files = reexport(run_dir, formats=formats, up_axis=up_axis, size_m=size_m)
    for fmt, path in files.items():
        typer.echo(f"{fmt}: {path}")


@app.command()
def preview(
    asset: Annotated[Path, typer.Argument(help="A mesh file: .usd/.usda/.usdc/.usdz/.glb/.gltf/.obj/.ply/.stl.")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="GIF path (default: beside the asset).")] = None,
    frames: Annotated[int, typer.Option("--frames", help="Frames in the turntable.")] = 24,
    resolution: Annotated[int, typer.Option("--resolution", help="Frame size in pixels.")] = 256,
) -> None:
    """Render a turntable GIF of an exported asset with magic3d's own rasterizer."""
    from magic3d.preview import preview_file

    path = preview_file(asset, out=out, frames=frames, resolution=resolution)
    typer.echo(str(path))


@app.command()
def convert(
    source: Annotated[Path, typer.Argument(help="A mesh file: .usd/.usda/.usdc/.usdz/.glb/.gltf/.obj/.ply/.stl.")],
    formats: Annotated[
        str, typer.Option("--format", "-f", help="Comma-separated: usdc,usda,usdz,glb,obj.")
    ] = "usdz",
    out: Annotated[str | None, typer.Option("--out", "-o", help="Output folder (default: <stem>/ beside FILE).")] = None,
    up_axis: Annotated[str, typer.Option("--up-axis", help="Y (default) or Z.")] = "Y",
    size_m: Annotated[float, typer.Option("--size", help="Largest side in metres.")] = 1.0,
) -> None:
    """Convert any readable mesh file to assets (asset.<format>) through magic3d's writers.

    A file with one material converts exactly (same welded vertices and texture); several
    materials or vertex colours are baked into one texture, as the writers take one material.
    """
    from magic3d.convert import convert_file

    files = convert_file(source, formats=formats, out=out, up_axis=up_axis, size_m=size_m)
    for fmt, path in files.items():
        typer.echo(f"{fmt}: {path}")


@app.command()
def info() -> None:
    """Versions, devices, presets and optional accelerators available here."""
    from magic3d.info import collect_info

    for key, value in collect_info().items():
        typer.echo(f"{key}: {value}")


register_batch(app)
register_gallery(app)
register_amortize(app)
register_control(app)


def main() -> None:
    run_app(app, sys.argv[1:] or ["--help"])


if __name__ == "__main__":
    main()
