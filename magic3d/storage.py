"""Files the user sees appear complete or not at all; output folders are checked up front, and
no write follows a link out of them."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
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


def atomic_write_tensors(path: Path, tensors: dict) -> None:
    """A safetensors file, written whole or not at all. Serialised in memory, not with
    ``safetensors.torch.save_file``: that writes its own ``.tmpXXXXXX`` beside the target first,
    which a kill leaves behind under a name no sweep of ours knows."""
    from safetensors.torch import save

    atomic_write_bytes(path, save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}))


_KINDS = {stat.S_IFREG: "a file", stat.S_IFDIR: "a folder", stat.S_IFIFO: "a FIFO (named pipe)",
          stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device"}
TEXT_LIMIT = 16 << 20  # bytes: a preset, a run record; prompt lists have their own cap


def path_kind(path: Path) -> str:
    """What is at ``path``, in words for a message: "a file", "a folder", "a FIFO (named pipe)",
    "a dangling link", "nothing", ... (links are followed, as opening the path would)."""
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return "a dangling link" if os.path.islink(path) else "nothing"
    except OSError as exc:
        return f"unreachable ({exc.strerror})"
    return _KINDS.get(stat.S_IFMT(mode), "not a regular file")


def require_file(path: Path, what: str) -> Path:
    """``path`` when it is a regular file, else one line saying what it is instead."""
    path = Path(path)
    kind = path_kind(path)
    if kind == "nothing":
        raise InputError(f"The {what} {str(path)!r} does not exist; check the path.")
    if kind != "a file":
        raise InputError(f"The {what} {str(path)!r} is {kind}, not a file; give a regular file.")
    return path


def read_input_text(path: Path, what: str, limit: int = TEXT_LIMIT) -> str:
    """A user's text file, read bounded: one line for something that is not a regular file, is
    larger than ``limit`` bytes, or is not UTF-8 text."""
    path = require_file(path, what)
    try:
        with open(path, "rb") as handle:
            data = handle.read(limit + 1)
    except OSError as exc:
        raise InputError(f"Cannot read the {what} {str(path)!r} ({exc.strerror}).") from None
    if len(data) > limit:
        raise InputError(f"The {what} {str(path)!r} is larger than {limit >> 20} MiB; this cannot be it.")
    if b"\0" in data:
        raise InputError(f"The {what} {str(path)!r} is not text (it holds NUL bytes).")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InputError(f"The {what} {str(path)!r} is not UTF-8 text; save it as UTF-8.") from None


def ensure_writable_dir(path: Path) -> None:
    """Create ``path`` if needed and check that files can be made in it."""
    if not str(path).strip():
        raise InputError("--out is empty; give the folder to write into, e.g. --out outputs.")
    path = Path(path)
    kind = path_kind(path)
    if kind not in ("nothing", "a folder"):
        raise InputError(f"The output path {str(path)!r} is {kind}, not a folder; choose another --out.")
    blocker = next((p for p in path.parents if path_kind(p) not in ("nothing", "a folder")), None)
    if blocker is not None:
        raise InputError(f"{str(blocker)!r} is {path_kind(blocker)}, so no output folder can be made under it; "
                         "choose another --out.")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"Cannot create the output folder {str(path)!r} ({exc.strerror}); choose another --out.") from None
    try:  # os.access says yes to root even on read-only mounts: try for real
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError:
        raise InputError(f"The output folder {str(path)!r} is not writable; choose another --out.") from None


def read_record(path: Path) -> dict | None:
    """The run's record, or None when there is none or it is damaged (the checkpoints then
    decide, see foreign_checkpoints); a run.json that is not a file is refused."""
    kind = "a link" if path.is_symlink() else path_kind(path)
    if kind == "nothing":
        return None
    if kind != "a file":
        raise InputError(f"{str(path)!r} is {kind}, not the run's record; remove it or choose another --out.")
    try:
        record = json.loads(read_input_text(path, "run record"))
    except (InputError, ValueError):  # too large, not text, not JSON: damaged
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
