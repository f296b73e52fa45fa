"""Files the user sees appear complete or not at all; output folders are checked up front, and
no write follows a link out of them."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from magic3d.errors import InputError, RunError


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync it and rename it into place.

    On any failure the temporary file is removed and an existing ``path`` is left untouched.
    """
    from exporters.common import atomic_output

    try:
        with atomic_output(Path(path)) as tmp:
            yield tmp
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise RunError(f"The disk is full while writing {str(path)!r}; free space and re-run to resume.") from None
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def ensure_writable_dir(path: Path) -> None:
    """Create ``path`` if needed and check that files can be made in it."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"Cannot create the output folder {str(path)!r} ({exc.strerror}); choose another --out.") from None
    if not path.is_dir():
        raise InputError(f"The output path {str(path)!r} is a file, not a folder; choose another --out.")
    try:  # os.access says yes to root even on read-only mounts: try for real
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError:
        raise InputError(f"The output folder {str(path)!r} is not writable; choose another --out.") from None


def read_record(path: Path) -> dict | None:
    """The run's record, or None when there is none or it is damaged (the checkpoints then
    decide, see foreign_checkpoints); a run.json that is not a file is refused."""
    if path.is_symlink() or (path.exists() and not path.is_file()):
        kind = "a link" if path.is_symlink() else "a folder" if path.is_dir() else "not a regular file"
        raise InputError(f"{str(path)!r} is {kind}, not the run's record; remove it or choose another --out.")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


@contextlib.contextmanager
def confined(root: Path) -> Iterator[None]:
    """Every write in the block stays under ``root``: a folder on the way that is a link (planted
    after ``check_run_folder`` looked) stops the write with one line instead of being followed."""
    from exporters.common import OutsideOutput, writes_confined_to

    try:
        with writes_confined_to(root):
            yield
    except OutsideOutput as exc:
        raise InputError(f"{exc}; remove the link or choose another --out.") from None


def check_run_folder(run_dir: Path) -> None:
    """Refuse a run folder that is, or holds, a link: through one, run.json, checkpoints, textures
    or the cache would be read from or written to somewhere outside --out."""
    run_dir = Path(run_dir)
    found = run_dir if run_dir.is_symlink() else None
    if found is None and run_dir.is_dir():
        for folder, dirs, files in os.walk(run_dir):  # does not descend into linked folders
            links = sorted(n for n in (*dirs, *files) if os.path.islink(os.path.join(folder, n)))
            if links:
                found = Path(folder) / links[0]
                break
    if found is not None:
        raise InputError(
            f"{str(found)!r} is a link; magic3d never reads or writes through links in a run folder: "
            "remove it or choose another --out."
        )
