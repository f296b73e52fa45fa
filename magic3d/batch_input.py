"""Prompt lists for ``magic3d batch``: read, validate every line up front, report all problems at once.

Two formats: plain text (one prompt a line) and JSONL (``{"prompt", "seed", "preset", "name"}``
per line). Blank lines and lines starting with ``#`` are skipped in both. Nothing runs until the
whole file is clean, unless the caller asks to skip the bad lines.
"""

from __future__ import annotations

import importlib
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from magic3d.errors import InputError, Magic3DError
from magic3d.naming import MAX_SLUG_CHARS, clean_prompt, slugify

JSONL_KEYS = {"prompt", "seed", "preset", "name"}
_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9-]*[a-z0-9])?$")
# Hook for tests and custom runners: "module:function" with plan_run's signature.
PLAN_ENV = "MAGIC3D_BATCH_PLAN"


@dataclass(frozen=True)
class BatchItem:
    """One valid line: the prompt as the pipeline will see it, plus its per-line settings."""

    line: int
    prompt: str
    slug: str
    seed: int | None = None
    preset: str | None = None


@dataclass(frozen=True)
class RunDefaults:
    """The generate options every line shares (per-line seed/preset win over these)."""

    out: Path = Path("outputs")
    preset: str | None = None
    prior: str | None = None
    overrides: tuple[str, ...] = ()
    seed: int | None = None
    device: str | None = None


@dataclass
class ParsedFile:
    items: list[BatchItem]
    problems: list[tuple[int, str]] = field(default_factory=list)


def detect_format(path: Path, lines: list[str]) -> str:
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        return "jsonl"
    if path.suffix.lower() == ".txt":
        return "text"
    first = next((s.strip() for s in lines if s.strip() and not s.strip().startswith("#")), "")
    return "jsonl" if first.startswith("{") else "text"


def _parse_json_line(text: str) -> dict[str, Any]:
    try:
        row = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(row, dict):
        raise InputError('each JSONL line must be an object such as {"prompt": "a red cube"}')
    unknown = sorted(set(row) - JSONL_KEYS)
    if unknown:
        raise InputError(f"unknown key(s) {unknown}; allowed: {sorted(JSONL_KEYS)}")
    if "prompt" not in row:
        raise InputError('missing "prompt"')
    if not isinstance(row["prompt"], str):
        raise InputError('"prompt" must be a string')
    seed = row.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63):
        raise InputError('"seed" must be a non-negative integer')
    for key in ("preset", "name"):
        if row.get(key) is not None and (not isinstance(row[key], str) or not row[key].strip()):
            raise InputError(f'"{key}" must be a non-empty string')
    name = row.get("name")
    if name is not None and (not _NAME.match(name) or len(name) > MAX_SLUG_CHARS):
        raise InputError(
            f'"name" {name!r} must be lowercase letters, digits and dashes (at most {MAX_SLUG_CHARS}), e.g. "red-cube"'
        )
    return row


def parse_lines(lines: list[str], fmt: str) -> tuple[list[tuple[int, dict[str, Any]]], list[tuple[int, str]]]:
    """Raw rows with their 1-based line numbers, and the problems found without the pipeline."""
    rows: list[tuple[int, dict[str, Any]]] = []
    problems: list[tuple[int, str]] = []
    for number, raw in enumerate(lines, start=1):
        text = raw.strip()
        if not text or text.startswith("#"):
            continue
        try:
            row = _parse_json_line(text) if fmt == "jsonl" else {"prompt": text}
            row["prompt"] = clean_prompt(row["prompt"])
        except Magic3DError as exc:
            problems.append((number, str(exc).rstrip(".")))
            continue
        rows.append((number, row))
    return rows, problems


def default_plan() -> Callable[..., Any] | None:
    """The pipeline's cheap validation (``plan_run``), or a hook named in $MAGIC3D_BATCH_PLAN."""
    hook = os.environ.get(PLAN_ENV)
    if hook:
        return load_callable(hook)
    try:
        from magic3d.pipeline import plan_run
    except ImportError:  # pipeline not importable here: prompts are still cleaned and named
        return None
    return plan_run


def _fresh_slug(prompt: str, used: set[str]) -> str:
    """The prompt's slug, or its first free ``-2``, ``-3``… variant; same input, same names."""
    base = slugify(prompt)
    slug, n = base, 1
    while slug in used:
        n += 1
        slug = f"{base[: MAX_SLUG_CHARS - len(str(n)) - 1]}-{n}"
    used.add(slug)
    return slug


def load_callable(spec: str) -> Callable[..., Any]:
    """``package.module:function`` -> the function."""
    module, _, attr = spec.partition(":")
    if not module or not attr:
        raise InputError(f"{spec!r} must look like 'package.module:function'.")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise InputError(f"cannot load {spec!r} ({exc}); check the module path.") from None


def read_batch_file(
    path: str | Path,
    defaults: RunDefaults,
    plan: Callable[..., Any] | None = None,
    use_default_plan: bool = True,
) -> ParsedFile:
    """Every valid line as a ``BatchItem`` and every bad one as ``(line, reason)``; raises for a bad file."""
    path = Path(path)
    try:
        data = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise InputError(f"The prompt file {str(path)!r} does not exist; check the path.") from None
    except UnicodeDecodeError:
        raise InputError(f"The prompt file {str(path)!r} is not UTF-8 text; save it as UTF-8.") from None
    except OSError as exc:
        raise InputError(f"Cannot read the prompt file {str(path)!r} ({exc.strerror}).") from None
    lines = data.splitlines()
    rows, problems = parse_lines(lines, detect_format(path, lines))
    if plan is None and use_default_plan:
        plan = default_plan()

    # Names: explicit ones are kept; the rest come from prompts, made distinct after the explicit ones.
    explicit: dict[str, int] = {}
    for number, row in rows:
        name = row.get("name")
        if name and name in explicit:
            problems.append((number, f'"name" {name!r} is already used on line {explicit[name]}'))
        elif name:
            explicit[name] = number
    used = set(explicit)
    bad = {n for n, _ in problems}
    items: list[BatchItem] = []
    for number, row in rows:
        slug = row.get("name") or _fresh_slug(row["prompt"], used)
        if number in bad:
            continue
        item = BatchItem(number, row["prompt"], slug, row.get("seed"), row.get("preset"))
        if plan is not None:
            try:
                plan(
                    item.prompt, out=defaults.out, preset=item.preset or defaults.preset, prior=defaults.prior,
                    overrides=list(defaults.overrides), seed=item.seed if item.seed is not None else defaults.seed,
                    device=defaults.device, name=item.slug,
                )
            except Magic3DError as exc:
                problems.append((number, str(exc).rstrip(".")))
                continue
            except ImportError:  # a pipeline still being assembled: fall back to cleaning and naming
                plan = None
        items.append(item)
    problems.sort()
    return ParsedFile(items, problems)


def load_batch(
    path: str | Path, defaults: RunDefaults, skip_invalid: bool = False, plan: Callable[..., Any] | None = None
) -> ParsedFile:
    """``read_batch_file`` that raises one ``InputError`` naming every bad line unless skipping them."""
    parsed = read_batch_file(path, defaults, plan)
    if parsed.problems and not skip_invalid:
        listed = "; ".join(f"line {n}: {msg}" for n, msg in parsed.problems)
        count = len(parsed.problems)
        raise InputError(
            f"{path} has {count} invalid line{'s' if count > 1 else ''} ({listed}); "
            "fix them or pass --skip-invalid to run the rest."
        )
    if not parsed.items:
        raise InputError(f"{path} holds no prompts to run; write one prompt a line (or JSONL).")
    return parsed
