"""What can be checked about the built-in prior without loading it: its words and its weights.

Torch-free on purpose: a prompt outside the vocabulary is refused by ``magic3d generate`` and
``magic3d batch`` in well under a second, before torch, the networks or trimesh are imported.
The world (``builtin_world``) and the text encoder (``builtin_model``) take their words from here.
"""

from __future__ import annotations

import re
from pathlib import Path

from magic3d.errors import InputError

KINDS = (
    "sphere", "cube", "cylinder", "cone", "torus", "capsule", "pyramid",
    "mushroom", "snowman", "table", "lamp", "tree", "house",
)
COLOURS = {
    "red": (0.85, 0.12, 0.10),
    "orange": (0.95, 0.50, 0.08),
    "yellow": (0.95, 0.85, 0.12),
    "green": (0.15, 0.65, 0.20),
    "blue": (0.12, 0.25, 0.85),
    "purple": (0.50, 0.18, 0.70),
    "pink": (0.95, 0.50, 0.70),
    "brown": (0.45, 0.28, 0.12),
    "black": (0.08, 0.08, 0.08),
    "gray": (0.55, 0.55, 0.55),
}
SIZES = {"small": 0.72, "big": 1.0}
VIEW_WORDS = ("front", "side", "back", "overhead", "view")
# Words that carry nothing for this world; accepted so natural prompts ("a photo of a red cube") work.
STOPWORDS = ("a", "an", "the", "of", "photo", "dslr", "3d", "model", "render", "object", "one")
VOCABULARY = (*KINDS, *COLOURS, *SIZES, *VIEW_WORDS)

WEIGHTS_DIR = Path(__file__).parent / "builtin_weights"


def tokenize(text: str) -> tuple[list[str], list[str]]:
    """Known words of ``text`` and the unknown ones (stopwords are neither)."""
    words = [w for w in re.split(r"[^a-z0-9]+", text.lower()) if w]
    known = [w for w in words if w in VOCABULARY]
    unknown = [w for w in words if w not in VOCABULARY and w not in STOPWORDS]
    return known, unknown


def validate_prompt(prompt: str) -> None:
    """Refuse prompts the built-in prior cannot draw, naming the unknown words."""
    known, unknown = tokenize(prompt)
    hint = "for open-vocabulary prompts use a real prior, e.g. --prior stabilityai/stable-diffusion-2-1-base"
    if unknown:
        # One short line whatever the prompt (CLI errors fit 300 characters): at most two unknown
        # words of at most 12 characters each, and the vocabulary space-separated.
        words = sorted(set(unknown))
        shown = ", ".join(w if len(w) <= 12 else w[:12] + "…" for w in words[:2]) + (", …" if len(words) > 2 else "")
        raise InputError(
            f"The built-in prior does not know {shown}; it knows {' '.join(VOCABULARY)}; or use --prior with a hub model."
        )
    if not any(w in KINDS for w in known):
        raise InputError(f"The built-in prior needs an object kind in the prompt ({', '.join(KINDS)}); {hint}.")


def weights_available(folder: Path = WEIGHTS_DIR) -> bool:
    return (folder / "unet" / "diffusion_pytorch_model.safetensors").is_file() and (
        folder / "text_encoder" / "model.safetensors"
    ).is_file()
