"""``magic3d gallery DIR [--serve] [--port N]``: republish a batch folder's gallery, and serve it.

``magic3d.cli`` calls ``register(app)``. Nothing here imports torch or the pipeline: the gallery
is rebuilt from ``batch.sqlite`` and the files beside it.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    """Add the ``gallery`` command to ``app``."""
    app.command("gallery")(gallery)


def gallery(
    folder: Annotated[Path, typer.Argument(help="A batch output folder (the --out of magic3d batch).")],
    serve: Annotated[bool, typer.Option("--serve", help="Serve it on http://127.0.0.1 until Ctrl-C.")] = False,
    port: Annotated[int, typer.Option("--port", help="Port for --serve.")] = 8000,
) -> None:
    """Rewrite FOLDER's index.html and world.html (3D viewers that work offline, also from file://)."""
    from magic3d.errors import InputError

    if not 1 <= port <= 65535:
        raise InputError(f"--port must be between 1 and 65535, not {port}.")
    check_batch_folder(folder)
    server = _bind(folder, port) if serve else None  # a busy port fails before anything is written
    page = republish(folder)
    typer.echo(f"gallery: {page}")
    if server is None:
        return
    typer.echo(f"serving {folder} at http://127.0.0.1:{server.server_address[1]}/ (Ctrl-C to stop)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def republish(folder: Path) -> Path:
    """Rebuild the gallery of a batch folder from its manifest; returns ``index.html``."""
    from magic3d.batch.gallery import publish
    from magic3d.batch.manifest import Manifest

    check_batch_folder(folder)
    with Manifest(folder) as manifest:
        return publish(folder, manifest)[1]


def check_batch_folder(folder: Path) -> None:
    from magic3d.batch.manifest import MANIFEST_NAME
    from magic3d.errors import InputError
    from magic3d.storage import path_kind

    folder = Path(folder)
    kind = path_kind(folder)
    if kind != "a folder":
        raise InputError(f"{str(folder)!r} is {kind}, not a folder; give a batch output folder.")
    if path_kind(folder / MANIFEST_NAME) != "a file":
        raise InputError(f"{str(folder)!r} holds no {MANIFEST_NAME}; give the --out folder of a magic3d batch.")


def _bind(folder: Path, port: int):  # noqa: ANN202 - http.server's type, imported here
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    from magic3d.errors import InputError

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base's name
            pass

    handler = functools.partial(Quiet, directory=str(folder))
    try:
        return ThreadingHTTPServer(("127.0.0.1", port), handler)
    except OSError as exc:
        raise InputError(f"Cannot serve on 127.0.0.1:{port} ({exc.strerror}); pick another --port.") from None
