"""View-dependent prompts: one embedding per camera bucket, chosen per rendered view.

DreamFusion's trick against the same face drawn from every side: append "front view",
"side view", "back view" or "overhead view" to the prompt by where the camera is. Perp-Neg
(optional) adds the other views as negative directions.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from magic3d.guidance.base import Prior, TextEmbeddings
from renderers.cameras import Cameras

BUCKETS = ("front", "side", "back", "overhead")
# Perp-Neg: which views push away from each bucket (the overhead view has none).
OPPOSITES = {"front": ("side", "back"), "side": ("front", "back"), "back": ("front", "side"), "overhead": ()}


def view_text(prompt: str, bucket: str, view_dependent: bool) -> str:
    return f"{prompt}, {bucket} view" if view_dependent else prompt


@dataclass
class ViewPrompts:
    prompt: str
    per_bucket: dict[str, TextEmbeddings]  # one row each
    perp_neg: bool = False
    perp_neg_weight: float = 1.0
    # Embeddings for textureless renders, when the prior captions shape without colour (the
    # built-in prior was trained that way); None: textureless renders use ``per_bucket``.
    shape_per_bucket: dict[str, TextEmbeddings] | None = None

    @classmethod
    def build(cls, prompt: str, prior: Prior, cfg: object, cache_dir: Path | None = None) -> ViewPrompts:
        view_dependent = bool(getattr(cfg, "view_dependent", True))
        negative = str(getattr(cfg, "negative_prompt", ""))
        use_cache = cache_dir is not None and bool(getattr(cfg, "embedding_cache", True))
        cache = cache_dir if use_cache else None

        shape_prompt = getattr(prior, "shape_prompt", None)
        shape_text = shape_prompt(prompt) if callable(shape_prompt) else prompt
        bases = [prompt] if shape_text == prompt else [prompt, shape_text]
        texts = {(base, b): view_text(base, b, view_dependent) for base in bases for b in BUCKETS}
        encoded = encode_cached(prior, list(texts.values()), negative, cache)

        def per_view(base: str) -> dict[str, TextEmbeddings]:
            return {b: encoded[texts[base, b]] for b in BUCKETS}

        per_bucket = per_view(prompt)
        shape_per_bucket = per_view(shape_text) if shape_text != prompt else None
        # Every embedding a run needs now exists: large text encoders (IF's T5-XXL) give their
        # memory back to the UNet. Priors reload them lazily if a later prompt needs them.
        free = getattr(prior, "free_text_encoder", None)
        if callable(free):
            free()
        return cls(prompt, per_bucket, bool(getattr(cfg, "perp_neg", False)), float(getattr(cfg, "perp_neg_weight", 1.0)),
                   shape_per_bucket)

    def for_buckets(self, buckets: list[str], shading: str = "albedo") -> TextEmbeddings:
        table = self.shape_per_bucket if shading == "textureless" and self.shape_per_bucket else self.per_bucket
        cond = torch.cat([table[b].cond for b in buckets])
        uncond = torch.cat([table[b].uncond for b in buckets])
        if not self.perp_neg:
            return TextEmbeddings(cond, uncond)
        negs, weights = [], []
        for b in buckets:
            others = OPPOSITES[b] or ("front", "back")
            negs.append(torch.cat([table[o].cond for o in others]))
            weights.append(torch.full((len(others),), self.perp_neg_weight if OPPOSITES[b] else 0.0, device=cond.device))
        return TextEmbeddings(cond, uncond, torch.stack(negs), torch.stack(weights).to(cond))

    def for_cameras(self, cameras: Cameras, shading: str = "albedo") -> TextEmbeddings:
        embeddings = self.for_buckets(cameras.view_buckets(), shading)
        embeddings.cameras = cameras.angles()
        return embeddings


def cache_key(prior: Prior, text: str, negative: str) -> str:
    model = str(getattr(prior, "model_id", prior.name))
    return hashlib.sha256("\x1f".join((model, text, negative)).encode("utf-8")).hexdigest()[:24]


def encode_cached(prior: Prior, texts: list[str], negative: str, cache_dir: Path | None) -> dict[str, TextEmbeddings]:
    """One-row embeddings of each of ``texts``: read from ``cache_dir`` when an earlier run computed
    them, the rest encoded together in one call (a large encoder visits the device once)."""
    out: dict[str, TextEmbeddings] = {}
    paths = {t: cache_dir / f"emb-{cache_key(prior, t, negative)}.safetensors" if cache_dir else None for t in texts}
    for text, path in paths.items():
        if path is not None and path.is_file():
            try:  # read on the host, then moved: safetensors' device loading differs between versions
                data = load_file(str(path))
                out[text] = TextEmbeddings(data["cond"].to(prior.device), data["uncond"].to(prior.device))
            except Exception:  # a damaged cache entry is recomputed, never trusted
                path.unlink(missing_ok=True)
    missing = [t for t in dict.fromkeys(texts) if t not in out]
    if not missing:
        return out
    emb = prior.encode_prompt(missing, [negative] * len(missing))
    for i, text in enumerate(missing):
        row = TextEmbeddings(emb.cond[i : i + 1], emb.uncond[i : i + 1])
        out[text] = row
        path = paths[text]
        if path is not None:
            from magic3d.storage import atomic_write_tensors

            atomic_write_tensors(path, {"cond": row.cond, "uncond": row.uncond})
    return out
