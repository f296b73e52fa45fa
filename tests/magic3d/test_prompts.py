"""View-dependent prompts: suffix per camera bucket, rows per camera, Perp-Neg views, on-disk embedding cache."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from magic3d.guidance import PriorConfig
from magic3d.guidance.base import TextEmbeddings
from magic3d.prompts import ViewPrompts, cache_key
from renderers.cameras import orbit_cameras


class RecordingPrior:
    """Embeds text as a deterministic vector and records every text it was asked to encode."""

    name = "recording"
    resolution = 8
    device = torch.device("cpu")

    def __init__(self, model_id: str = "org/model") -> None:
        self.model_id = model_id
        self.calls: list[tuple[str, str]] = []
        self.freed = 0

    def embed(self, text: str) -> torch.Tensor:
        g = torch.Generator().manual_seed(int.from_bytes(text.encode()[:8].ljust(8, b"\0"), "little") % 2**31 + len(text))
        return torch.randn(1, 3, 4, generator=g)

    def encode_prompt(self, prompts: list[str], negative_prompts: list[str]) -> TextEmbeddings:
        self.calls += list(zip(prompts, negative_prompts, strict=True))
        return TextEmbeddings(torch.cat([self.embed(p) for p in prompts]), torch.cat([self.embed(n) for n in negative_prompts]))

    def free_text_encoder(self) -> None:
        self.freed += 1


def cameras_for(buckets: dict[str, tuple[float, float]]):
    elev = torch.tensor([e for e, _ in buckets.values()])
    azim = torch.tensor([a for _, a in buckets.values()])
    return orbit_cameras(elev, azim, 3.0, 0.8, 8, 8)


def test_each_camera_bucket_gets_its_view_suffix():
    prior = RecordingPrior()
    vp = ViewPrompts.build("a red chair", prior, PriorConfig(negative_prompt="blurry"))
    assert [c[0] for c in prior.calls] == [
        "a red chair, front view", "a red chair, side view", "a red chair, back view", "a red chair, overhead view",
    ]
    assert all(neg == "blurry" for _, neg in prior.calls)
    cams = cameras_for({"front": (10.0, 5.0), "side": (20.0, 90.0), "back": (0.0, 180.0), "overhead": (75.0, 30.0),
                        "side2": (30.0, -100.0)})
    assert cams.view_buckets() == ["front", "side", "back", "overhead", "side"]
    emb = vp.for_cameras(cams)
    for row, text in enumerate(["front", "side", "back", "overhead", "side"]):
        assert torch.equal(emb.cond[row], prior.embed(f"a red chair, {text} view")[0])
        assert torch.equal(emb.uncond[row], prior.embed("blurry")[0])
    assert emb.negative_views is None
    # Each row carries its camera (azimuth wrapped to [-180, 180)), for priors conditioned on it.
    expected = torch.tensor([[10.0, 5.0], [20.0, 90.0], [0.0, -180.0], [75.0, 30.0], [30.0, -100.0]])
    assert emb.cameras.shape == (5, 2) and torch.allclose(emb.cameras, expected, atol=1e-4)
    assert prior.freed == 1  # the text encoder is released once every embedding exists


def test_textureless_renders_get_the_shape_prompt_when_the_prior_has_one():
    class ShapePrior(RecordingPrior):
        def shape_prompt(self, prompt: str) -> str:
            return prompt.replace(" red", "")

    prior = ShapePrior()
    vp = ViewPrompts.build("a red chair", prior, PriorConfig())
    cams = cameras_for({"front": (10.0, 5.0), "back": (0.0, 180.0)})
    shaded, plain = vp.for_cameras(cams, "diffuse"), vp.for_cameras(cams, "textureless")
    assert torch.equal(shaded.cond[1], prior.embed("a red chair, back view")[0])
    assert torch.equal(plain.cond[0], prior.embed("a chair, front view")[0])
    assert torch.equal(plain.cond[1], prior.embed("a chair, back view")[0])
    # A prior without a shape prompt scores every shading against the one prompt.
    plain_prior = RecordingPrior()
    vp = ViewPrompts.build("a red chair", plain_prior, PriorConfig())
    assert torch.equal(vp.for_cameras(cams, "textureless").cond, vp.for_cameras(cams).cond)
    assert len(plain_prior.calls) == 4


def test_view_dependence_can_be_switched_off():
    prior = RecordingPrior()
    ViewPrompts.build("a cup", prior, PriorConfig(view_dependent=False))
    assert {c[0] for c in prior.calls} == {"a cup"}


def test_perp_neg_rows_carry_the_other_views():
    prior = RecordingPrior()
    vp = ViewPrompts.build("a car", prior, PriorConfig(perp_neg=True, perp_neg_weight=0.7))
    emb = vp.for_buckets(["front", "back", "overhead"])
    assert emb.negative_views.shape == (3, 2, 3, 4) and emb.negative_weights.shape == (3, 2)
    assert torch.equal(emb.negative_views[0, 0], prior.embed("a car, side view")[0])
    assert torch.equal(emb.negative_views[0, 1], prior.embed("a car, back view")[0])
    assert torch.equal(emb.negative_views[1, 1], prior.embed("a car, side view")[0])
    assert torch.allclose(emb.negative_weights, torch.tensor([[0.7, 0.7], [0.7, 0.7], [0.0, 0.0]]))


def test_embedding_cache_is_hit_on_the_second_run(tmp_path: Path):
    cfg = PriorConfig(negative_prompt="ugly")
    first = RecordingPrior()
    a = ViewPrompts.build("a lamp", first, cfg, tmp_path)
    assert len(first.calls) == 4 and len(list(tmp_path.glob("emb-*.safetensors"))) == 4
    second = RecordingPrior()
    b = ViewPrompts.build("a lamp", second, cfg, tmp_path)
    assert second.calls == []  # every bucket came from disk
    for bucket in a.per_bucket:
        assert torch.equal(a.per_bucket[bucket].cond, b.per_bucket[bucket].cond)
        assert torch.equal(a.per_bucket[bucket].uncond, b.per_bucket[bucket].uncond)
    # Another model, negative prompt or a disabled cache all miss.
    other = RecordingPrior("org/other")
    ViewPrompts.build("a lamp", other, cfg, tmp_path)
    assert len(other.calls) == 4
    neg = RecordingPrior()
    ViewPrompts.build("a lamp", neg, PriorConfig(negative_prompt="dark"), tmp_path)
    assert len(neg.calls) == 4
    off = RecordingPrior()
    ViewPrompts.build("a lamp", off, PriorConfig(negative_prompt="ugly", embedding_cache=False), tmp_path)
    assert len(off.calls) == 4
    assert cache_key(first, "x", "") != cache_key(other, "x", "")


def test_a_damaged_cache_entry_is_recomputed(tmp_path: Path):
    ViewPrompts.build("a cup", RecordingPrior(), PriorConfig(), tmp_path)
    victim = sorted(tmp_path.glob("emb-*.safetensors"))[0]
    victim.write_bytes(b"not safetensors")
    again = RecordingPrior()
    ViewPrompts.build("a cup", again, PriorConfig(), tmp_path)
    assert len(again.calls) == 1
    assert victim.stat().st_size > 100


@pytest.mark.slow
def test_real_tiny_prior_cache_round_trip_frees_the_encoder(tmp_path: Path):
    from magic3d.guidance import load_prior
    from magic3d.guidance.tiny import build_tiny_sd

    prior = load_prior(str(build_tiny_sd(tmp_path / "sd")), PriorConfig(), torch.device("cpu"))
    vp = ViewPrompts.build("a red chair", prior, PriorConfig(), tmp_path / "cache")
    assert prior.text_encoder is None
    again = ViewPrompts.build("a red chair", prior, PriorConfig(), tmp_path / "cache")
    assert prior.text_encoder is None  # cache hit: the encoder was not reloaded
    assert torch.equal(vp.per_bucket["back"].cond, again.per_bucket["back"].cond)
    direct = prior.encode_prompt(["a red chair, back view"], [""]).cond
    assert torch.allclose(direct, vp.per_bucket["back"].cond)
