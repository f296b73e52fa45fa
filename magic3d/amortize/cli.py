"""``magic3d amortize`` and ``magic3d interpolate``, and what ``magic3d generate --from`` runs.

``magic3d.cli`` calls ``register(app)``; ``python -m magic3d.amortize.cli ...`` runs the same
commands on their own. Importing this module imports no torch: bad input is refused first.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    """Add the ``amortize`` and ``interpolate`` commands to ``app``."""
    app.command("amortize")(amortize)
    app.command("interpolate")(interpolate)


def amortize(
    prompts: Annotated[Path, typer.Argument(help="Prompts: a text file (one a line, # comments) or JSONL, as batch reads.")],
    out: Annotated[str, typer.Option("--out", "-o", help="The model folder to write (or resume).")] = "",
    prior: Annotated[str | None, typer.Option("--prior", help="Diffusion prior: 'builtin', a hub id or a folder.")] = None,
    preset: Annotated[str | None, typer.Option("--preset", "-p", help="Amortize preset (magic3d/amortize/presets) "
                                               "or a YAML file; default builtin.")] = None,
    overrides: Annotated[list[str] | None, typer.Option("--set", "-s", help="Override KEY=VALUE (amortize.steps=..., "
                                                        "coarse.lr=...). Repeatable.")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Random seed.")] = None,
    device: Annotated[str | None, typer.Option("--device", help="cpu, cuda, cuda:N or auto.")] = None,
    restart: Annotated[bool, typer.Option("--restart", help="Ignore checkpoints and train from scratch.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Train one text-conditioned model on every prompt in PROMPTS by SDS (ATT3D); resumable."""
    from magic3d.amortize.train import plan_training

    plan = plan_training(prompts, out, prior, preset, overrides or [], seed, device, restart)
    from magic3d.amortize.train import run_training
    from magic3d.progress import console_progress

    with console_progress(quiet) as progress:
        result = run_training(plan, restart, progress, (lambda m: None) if quiet else (lambda m: typer.echo(m, err=True)))
    typer.echo(f"model: {result.model_dir} ({len(plan.texts)} prompts, {result.steps} steps)")


def generate_from_model(
    prompt: str, model_dir: str, out: str, refine_steps: int = 0, prior: str | None = None, device: str | None = None,
    overrides: list[str] | None = None, quiet: bool = False,
) -> None:
    """``magic3d generate PROMPT --from MODEL_DIR``: prints each file as ``generate`` does."""
    from magic3d.amortize.generate import plan_generation

    plan, text, run_dir = plan_generation(prompt, model_dir, out, refine_steps, prior, device, overrides or [])
    from magic3d.amortize.generate import run_from
    from magic3d.progress import console_progress

    with console_progress(quiet) as progress:
        result = run_from(plan, text, run_dir, refine_steps, progress)
    for fmt, path in result.files.items():
        typer.echo(f"{fmt}: {path}")
    # The forward pass first: it is what the amortized model itself costs; the rest is mesh and file work.
    rest = ", ".join(f"{k} {v:.2f}" for k, v in result.timings.items() if k != "forward")
    typer.echo(f"seconds: forward {result.timings['forward']:.3f} ({rest})")


def interpolate(
    model_dir: Annotated[str, typer.Argument(help="An amortized model folder (magic3d amortize).")],
    prompt_a: Annotated[str, typer.Argument(help="The first frame's prompt.")],
    prompt_b: Annotated[str, typer.Argument(help="The last frame's prompt.")],
    frames: Annotated[int, typer.Option("--frames", "-n", help="Meshes from A to B, both ends included.")] = 8,
    out: Annotated[str, typer.Option("--out", "-o", help="Folder for the frames, morph.gif and sequence.usda.")] = "",
    device: Annotated[str | None, typer.Option("--device", help="cpu, cuda, cuda:N or auto.")] = None,
) -> None:
    """Walk the model's conditioning from A to B: one mesh per frame, a morph GIF, one USD holding them all."""
    from magic3d.amortize.interpolate import plan_interpolation, run_interpolation

    planned = plan_interpolation(model_dir, prompt_a, prompt_b, frames, out, device)
    files = run_interpolation(*planned)
    for key in ("gif", "usd"):
        typer.echo(f"{key}: {files[key]}")


def main(argv: list[str] | None = None) -> None:
    """Run these commands as a program of their own, with ``magic3d``'s one-line errors."""
    from magic3d.console import run_app

    app = typer.Typer(rich_markup_mode=None, add_completion=False, pretty_exceptions_enable=False)
    register(app)

    @app.command("generate")
    def generate(prompt: str, from_model: Annotated[str, typer.Option("--from")],
                 out: Annotated[str, typer.Option("--out", "-o")] = "outputs",
                 refine_steps: Annotated[int, typer.Option("--refine-steps")] = 0,
                 prior: Annotated[str | None, typer.Option("--prior")] = None,
                 device: Annotated[str | None, typer.Option("--device")] = None,
                 overrides: Annotated[list[str] | None, typer.Option("--set", "-s")] = None,
                 quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False) -> None:
        generate_from_model(prompt, from_model, out, refine_steps, prior, device, overrides, quiet)

    run_app(app, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    main()
