"""``magic3d batch``: the typer command over ``magic3d.batch.run_batch``.

``magic3d.cli`` calls ``register(app)``; ``python -m magic3d.batch.cli FILE ...`` runs the same
command on its own (tests, and machines where the console script is not installed).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    """Add the ``batch`` command to ``app``."""
    app.command("batch")(batch)


def batch(
    file: Annotated[Path, typer.Argument(help="Prompts: a text file (one a line, # comments) or JSONL "
                                          '({"prompt", "seed", "preset", "name"} per line, and at most one of '
                                          '"edit_from" (a finished run folder, with "keep"), "init_shape" or '
                                          '"texture_mesh" (a mesh file); relative paths from FILE\'s folder).')],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder: one run folder per prompt, "
                                      "plus batch.sqlite, world.usda and index.html.")] = Path("outputs"),
    preset: Annotated[str | None, typer.Option("--preset", "-p", help="Preset for lines without one.")] = None,
    prior: Annotated[str | None, typer.Option("--prior", help="Diffusion prior: 'builtin', a hub id or a folder.")] = None,
    overrides: Annotated[list[str] | None, typer.Option("--set", "-s", help="Config override KEY=VALUE. Repeatable.")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed for lines without one.")] = None,
    device: Annotated[str | None, typer.Option("--device", help="cpu, cuda, cuda:N or auto; with --workers N "
                                               "and several GPUs each worker gets its own.")] = None,
    workers: Annotated[int | None, typer.Option("--workers", "-w", help="Jobs at once (local: processes, default 1; "
                                                "ray: tasks in flight, default what the cluster fits).")] = None,
    jobs_per_worker: Annotated[int | None, typer.Option(
        "--jobs-per-worker", metavar="N", help="Replace a worker after N jobs (1: a fresh process per job). Default: "
        "never; each worker loads the prior (or --from model) once and keeps it; a crash or timeout still replaces it.",
    )] = None,
    from_model: Annotated[Path | None, typer.Option("--from", help="An amortized model folder (magic3d amortize): "
                                                    "every line is one forward pass of it; --preset does not apply.")] = None,
    backend: Annotated[str, typer.Option("--backend", help="local or ray.")] = "local",
    address: Annotated[str | None, typer.Option("--address", help="Ray cluster: auto or HOST:PORT "
                                                "(default: a local Ray instance).")] = None,
    num_cpus: Annotated[float, typer.Option("--num-cpus", help="Ray: CPUs per job.")] = 1.0,
    num_gpus: Annotated[float | None, typer.Option("--num-gpus", help="Ray: GPUs per job (default: 1 if the "
                                                   "cluster has GPUs, else 0).")] = None,
    retries: Annotated[int, typer.Option("--retries", help="Extra attempts for a failing job in this run.")] = 1,
    timeout: Annotated[float | None, typer.Option("--timeout", help="Seconds one job attempt may take.")] = None,
    skip_invalid: Annotated[bool, typer.Option("--skip-invalid", help="Run the valid lines even if some are not.")] = False,
    restart: Annotated[bool, typer.Option("--restart", help="Start every job over (done ones too), ignoring its "
                                          "checkpoints and run folder, as generate --restart does.")] = False,
    restart_jobs: Annotated[list[str] | None, typer.Option(
        "--restart-job", metavar="NAME", help="Start one job over, NAME being its run folder's name under --out "
        "(e.g. a-red-cube); the way out for a run folder that holds another prompt or config. Repeatable.",
    )] = None,
    json_events: Annotated[bool, typer.Option("--json", help="One JSON event per line on stdout, no bars.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress; print only result paths.")] = False,
) -> None:
    """Generate an asset for every prompt in FILE, resumably, and a world.usda referencing them all."""
    from magic3d.batch import BatchOptions, run_batch
    from magic3d.batch.report import Reporter
    from magic3d.errors import InputError

    if backend not in ("local", "ray"):
        raise InputError(f"--backend must be 'local' or 'ray', not {backend!r}.")
    options = BatchOptions(
        out=out, preset=preset, prior=prior, overrides=tuple(overrides or ()), seed=seed, device=device,
        workers=workers, backend=backend, address=address, num_cpus=num_cpus, num_gpus=num_gpus,  # type: ignore[arg-type]
        jobs_per_worker=jobs_per_worker, from_model=from_model, retries=retries, timeout=timeout,
        skip_invalid=skip_invalid, restart=restart, restart_jobs=tuple(restart_jobs or ()),
    )
    reporter = Reporter(json_mode=json_events, quiet=quiet)
    try:
        summary = run_batch(file, options, reporter)
    finally:
        reporter.close()
    if not json_events:
        typer.echo(f"world: {summary.world}")
        typer.echo(f"gallery: {summary.gallery}")
    if summary.failed:
        first, reason = next(iter(summary.failed.items()))
        reason = reason if len(reason) <= 200 else reason[:199] + "…"
        total = len(summary.done) + len(summary.failed)
        typer.echo(
            f"error: {len(summary.failed)} of {total} jobs failed ({first}: {reason}); "
            f"re-run the same command to retry them; details in {summary.gallery}",
            err=True,
        )
        raise typer.Exit(1)


def main(argv: list[str] | None = None) -> None:
    """Run ``batch`` as a program on its own, with the same one-line errors as ``magic3d``."""
    from magic3d.console import run_app

    app = typer.Typer(rich_markup_mode=None, add_completion=False, pretty_exceptions_enable=False)
    register(app)
    run_app(app, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    main()
