"""What a batch job starts from besides its prompt: a finished run to edit (``"edit_from"``), the
user's shape (``"init_shape"``), the user's mesh to texture (``"texture_mesh"``), or an amortized
model (``magic3d batch --from MODEL_DIR``). Nothing: Magic3D's blob, as ``magic3d generate``.

A source is a ``JobSource``: its kind and its path, made absolute (a line's relative path is taken
from the batch file's folder, so a resumed batch finds the same file from any working directory).
It is part of the job in the manifest: a line whose source changed is another job, never resumed
into.

Parsing only (no planner is imported here: ``amortize`` reads prompt files through ``input.py``);
``planners.py`` plans a job from its source.
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
