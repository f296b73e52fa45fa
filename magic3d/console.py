"""Running a typer app the way every magic3d command runs: errors meant for people are one
``error:`` line and exit code 2, interrupts say how to resume, bugs are one line unless
MAGIC3D_DEBUG asks for the traceback. ``magic3d`` and ``python -m magic3d.batch.cli`` share it."""

from __future__ import annotations

import os
import sys

import typer

from magic3d.errors import Magic3DError


def run_app(typer_app: typer.Typer, argv: list[str]) -> None:
    """Run a typer app; anything meant for people ends as one ``error:`` line and an exit code."""
    try:
        code = typer_app(args=argv, standalone_mode=False)
    except Magic3DError as exc:
        fail(str(exc), 2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.TyperException as exc:  # usage errors: one line too, not a boxed panel
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        fail(f"{message} (see --help)", getattr(exc, "exit_code", 2))
    except (KeyboardInterrupt, typer.Abort):
        fail("interrupted; re-run the same command to resume from the last checkpoint", 130)
    except Exception as exc:  # a bug, not bad input: still one line unless asked for more
        if os.environ.get("MAGIC3D_DEBUG"):
            raise
        msg = str(exc).splitlines()[0] if str(exc) else ""
        fail(f"internal error ({type(exc).__name__}: {msg}); set MAGIC3D_DEBUG=1 for details", 1)
    if code == 130:  # typer hands Ctrl-C (and the batch's SIGTERM) back as exit code 130
        fail("interrupted; re-run the same command to resume from the last checkpoint", 130)
    sys.exit(code if isinstance(code, int) else 0)


def fail(message: str, code: int) -> None:
    first = " ".join(message.split()) or "failed"
    typer.echo(f"error: {first}", err=True)
    sys.exit(code)
