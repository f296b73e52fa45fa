"""Prompt lists for ``magic3d batch``: read, validate every line up front, report all problems at once.

Two formats: plain text (one prompt a line) and JSONL (``{"prompt", "seed", "preset", "name"}``
per line). Blank lines and lines starting with ``#`` are skipped in both. Nothing runs until the
whole file is clean, unless the caller asks to skip the bad lines.

The file is read bounded (a regular file of at most ``MAX_FILE_BYTES`` and ``MAX_LINES`` lines,
UTF-8 without NUL bytes), and the expensive, prompt-independent half of the pipeline's checks
(``plan_config``: config, priors, device) runs once per distinct setting, not once per line.
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
from magic3d.storage import read_input_text

JSONL_KEYS = {"prompt", "seed", "preset", "name"}
_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9-]*[a-z0-9])?$")
# Hook for tests and custom runners: "module:function" with plan_run's signature, called per line.
PLAN_ENV = "MAGIC3D_BATCH_PLAN"
# A prompt file is read whole before anything runs: these keep /dev/zero or a stray log from
# exhausting memory. A bigger batch is several files (each with its own --out, or distinct names).
MAX_FILE_BYTES = 64 * 2**20
MAX_LINES = 100_000
# The error for a file with bad lines names this many distinct reasons, each cut to this length.
MAX_LISTED = 10
MAX_REASON_CHARS = 240
# config.BOUNDS["seed"], which plan_config applies to runtime.seed (magic3d.config imports torch:
# too slow for this module, which every job process imports; a test keeps the two equal).
SEED_MIN, SEED_MAX = 0, 2**63 - 1


def shown(value: Any, limit: int = 100) -> str:
    """A value as an error echoes it, cut to ``limit`` characters."""
    try:
        text = repr(value) if isinstance(value, str) else str(value)
    except ValueError:  # an int past Python's digit limit for str()
        text = "a number too large to print"
    return text if len(text) <= limit else text[: limit - 1] + "…"


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
    # The same bound plan_config applies to runtime.seed, so a line's seed needs no config of its own.
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not SEED_MIN <= seed <= SEED_MAX):
        raise InputError(f'"seed" must be an integer from {SEED_MIN} to {SEED_MAX}, not {shown(seed, 40)}')
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


LineCheck = Callable[[BatchItem], None]


def default_plan() -> Callable[..., Any] | None:
    """A per-line hook named in $MAGIC3D_BATCH_PLAN (``plan_run``'s signature), or None."""
    hook = os.environ.get(PLAN_ENV)
    return load_callable(hook) if hook else None


def hook_check(plan: Callable[..., Any], defaults: RunDefaults) -> LineCheck:
    """Each line through ``plan`` (``plan_run``'s signature): hooks and callers that bring their own."""

    def check(item: BatchItem) -> None:
        plan(
            item.prompt, out=defaults.out, preset=item.preset or defaults.preset, prior=defaults.prior,
            overrides=list(defaults.overrides), seed=item.seed if item.seed is not None else defaults.seed,
            device=defaults.device, name=item.slug,
        )

    return check


def pipeline_check(defaults: RunDefaults) -> LineCheck | None:
    """``plan_run``'s checks per line, with its expensive half (``plan_config``: YAML, priors,
    device) done once per distinct setting; None when the pipeline cannot be imported here.

    Lines differ only in prompt, preset and seed. The config is planned with the batch's own
    seed: a line's seed changes nothing but ``runtime.seed``, whose one rule (its bound) the
    JSONL parser applies. A config error is the same for every line sharing the setting.
    """
    try:
        from magic3d.guidance import validate_prompt_for_prior
        from magic3d.plan import plan_config
    except ImportError:  # a pipeline without the split: plan_run per line, or only clean and name
        try:
            from magic3d.plan import plan_run
        except ImportError:
            return None
        return hook_check(plan_run, defaults)
    planned: dict[tuple[Any, ...], Any] = {}

    def check(item: BatchItem) -> None:
        key = (item.preset or defaults.preset, defaults.prior, tuple(defaults.overrides), defaults.seed,
               defaults.device)
        if key not in planned:
            try:
                planned[key] = plan_config(*key)
            except Magic3DError as exc:
                planned[key] = str(exc)
        cfg = planned[key]
        if isinstance(cfg, str):
            raise Magic3DError(cfg)
        # What plan_run checks per prompt: every prior the run will use accepts it.
        for model in dict.fromkeys((cfg.prior.id, cfg.prior.fine_id or cfg.prior.id)):
            validate_prompt_for_prior(item.prompt, model)

    return check


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


def read_prompt_lines(path: str | Path) -> list[str]:
    """The lines of a prompt file, read bounded; one ``InputError`` for anything that is not one.

    ``storage.read_input_text`` reads only a regular file (a FIFO, device, folder or dangling
    link is named as such, never waited on or read from), at most ``MAX_FILE_BYTES`` of it, and
    only UTF-8 text without NUL bytes; a file of more than ``MAX_LINES`` lines is refused here.
    """
    lines = read_input_text(Path(path), "prompt file", MAX_FILE_BYTES).splitlines()
    if len(lines) > MAX_LINES:
        raise InputError(f"The prompt file {shown(str(path), 120)} has {len(lines):,} lines, more than the "
                         f"{MAX_LINES:,} a batch takes; split it into several batches.")
    return lines


def read_batch_file(
    path: str | Path,
    defaults: RunDefaults,
    plan: Callable[..., Any] | None = None,
    use_default_plan: bool = True,
) -> ParsedFile:
    """Every valid line as a ``BatchItem`` and every bad one as ``(line, reason)``; raises for a bad file.

    ``plan`` (``plan_run``'s signature) checks each line; without one, $MAGIC3D_BATCH_PLAN's hook
    or else the pipeline's own checks do (``use_default_plan=False``: only parse and name).
    """
    path = Path(path)
    lines = read_prompt_lines(path)
    rows, problems = parse_lines(lines, detect_format(path, lines))
    check: LineCheck | None = None
    if plan is None and use_default_plan:
        plan = default_plan()
        check = None if plan else pipeline_check(defaults)
    if plan is not None:
        check = hook_check(plan, defaults)

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
        if check is not None:
            try:
                check(item)
            except Magic3DError as exc:
                problems.append((number, str(exc).rstrip(".")))
                continue
            except ImportError:  # a pipeline still being assembled: fall back to cleaning and naming
                check = None
        items.append(item)
    problems.sort()
    return ParsedFile(items, problems)


def describe_problems(problems: list[tuple[int, str]]) -> str:
    """Bad lines in a bounded sentence: lines sharing a reason are named together, at most
    ``MAX_LISTED`` reasons are shown, each cut to ``MAX_REASON_CHARS``."""
    by_reason: dict[str, list[int]] = {}
    for number, reason in problems:
        by_reason.setdefault(" ".join(reason.split()), []).append(number)
    parts = []
    for reason, numbers in list(by_reason.items())[:MAX_LISTED]:
        if len(numbers) == 1:
            where = f"line {numbers[0]}"
        else:
            where = "lines " + ", ".join(map(str, numbers[:3])) + (f" and {len(numbers) - 3} more" if len(numbers) > 3 else "")
        if len(reason) > MAX_REASON_CHARS:
            reason = reason[: MAX_REASON_CHARS - 1] + "…"
        parts.append(f"{where}: {reason}")
    rest = sum(len(n) for n in list(by_reason.values())[MAX_LISTED:])
    if rest:
        parts.append(f"and {rest} more line{'s' if rest > 1 else ''} with other problems")
    return "; ".join(parts)


def load_batch(
    path: str | Path, defaults: RunDefaults, skip_invalid: bool = False, plan: Callable[..., Any] | None = None
) -> ParsedFile:
    """``read_batch_file`` that raises one ``InputError`` naming the bad lines unless skipping them."""
    parsed = read_batch_file(path, defaults, plan)
    name = shown(str(path), 120)
    if parsed.problems and not skip_invalid:
        count = len(parsed.problems)
        raise InputError(
            f"{name} has {count} invalid line{'s' if count > 1 else ''} ({describe_problems(parsed.problems)}); "
            "fix them or pass --skip-invalid to run the rest."
        )
    if not parsed.items:
        raise InputError(f"{name} holds no prompts to run; write one prompt a line (or JSONL).")
    return parsed
