"""Prompts in, safe names out: slugs that can never leave the output folder."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from pathlib import Path

from magic3d.errors import InputError

MAX_PROMPT_CHARS = 2000
MAX_SLUG_CHARS = 64
# Names Windows refuses for files whatever the extension; assets get copied there.
_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)), *(f"lpt{i}" for i in range(10))}


def clean_prompt(prompt: str) -> str:
    """The prompt with control characters removed and whitespace collapsed; rejects empty ones."""
    if not isinstance(prompt, str):
        raise InputError("The prompt must be text.")
    text = "".join(" " if unicodedata.category(c)[0] == "C" else c for c in prompt)
    text = " ".join(text.split())
    if not text:
        raise InputError("The prompt is empty; describe the object, e.g. \"a red cube\".")
    if len(text) > MAX_PROMPT_CHARS:
        # The text encoders see at most 77 tokens anyway; keep run.json and manifests small.
        text = text[:MAX_PROMPT_CHARS]
    return text


def slugify(prompt: str, max_chars: int = MAX_SLUG_CHARS) -> str:
    """A lowercase ASCII name for folders and USD prims: ``a-red-cube``.

    Non-ASCII prompts keep a short hash so different prompts still get different names.
    """
    folded = unicodedata.normalize("NFKD", prompt).encode("ascii", "ignore").decode("ascii")
    slug = re.sub(r"[^a-z0-9]+", "-", folded.lower()).strip("-")
    lossy = len(folded.strip()) < len(prompt.strip()) or len(slug) > max_chars
    slug = slug[:max_chars].rstrip("-")
    if lossy or not slug:
        digest = hashlib.sha1(prompt.encode("utf-8")).hexdigest()[:8]
        slug = f"{slug[: max_chars - 9]}-{digest}".strip("-")
    if slug.split("-")[0] in _RESERVED:
        slug = f"asset-{slug}"
    return slug


def unique_slugs(prompts: list[str]) -> list[str]:
    """Slugs for many prompts, made distinct with -2, -3 … in order of appearance."""
    seen: dict[str, int] = {}
    out = []
    for p in prompts:
        base = slugify(p)
        n = seen.get(base, 0) + 1
        seen[base] = n
        out.append(base if n == 1 else f"{base[: MAX_SLUG_CHARS - 4]}-{n}")
    return out


def inside(root: Path, name: str) -> Path:
    """``root / name`` after checking that it stays inside ``root``."""
    root = root.resolve()
    path = (root / name).resolve()
    if path != root and root not in path.parents:
        raise InputError(f"The name {name!r} would write outside the output folder {str(root)!r}.")
    return path


# Words that introduce what follows the object ("a squirrel wearing a hat", "a cat on a mat").
_AFTER_OBJECT = {"with", "wearing", "on", "in", "holding", "made", "that", "which", "riding", "sitting",
                 "standing", "next", "under", "over", "near", "and", "by", "at", "from", "of"}
_BEFORE_OBJECT = re.compile(r"^.*?\b(?:photo|picture|image|render|rendering|model|view)\s+of\s+", re.I)


def object_word(prompt: str) -> str:
    """The object a prompt names, as one lowercase word, for semantic labels: "a red mushroom" ->
    "mushroom", "a DSLR photo of an astronaut riding a horse" -> "astronaut"; "" when none."""
    text = _BEFORE_OBJECT.sub("", " ".join(prompt.split()), count=1).split(",")[0]
    words = re.findall(r"[A-Za-z][A-Za-z-]*", text)
    head: list[str] = []
    for word in words:
        if word.lower() in _AFTER_OBJECT and head:
            break
        head.append(word)
    nouns = [w for w in head if w.lower() not in ("a", "an", "the")]
    return nouns[-1].lower() if nouns else ""
