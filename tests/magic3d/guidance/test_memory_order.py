"""Issue 18, defect 4: IF's T5 and its UNet are never on the device together, and a run's
prompts are encoded in one call. Checked on device moves under the device harness, not timings."""

from __future__ import annotations

import pytest
import torch
from device_harness import DeviceHarness, on_device

from magic3d.guidance import PriorConfig, SDSConfig, load_prior
from magic3d.prompts import BUCKETS, ViewPrompts
from magic3d.stages.losses import SDSLoss
from renderers.cameras import orbit_cameras


def watch_encoder(prior, seen: list[dict]) -> None:
    """Record, at each text-encoder call, where the UNet's weights and the encoder's are."""
    real = prior.run_text_encoder

    def run(encoder, tokens):
        seen.append({"rows": tokens.input_ids.shape[0],
                     "unet_on_device": any(on_device(p) for p in prior.unet.parameters()),
                     "encoder_on_device": all(on_device(p) for p in encoder.parameters())})
        return real(encoder, tokens)

    prior.run_text_encoder = run


@pytest.mark.parametrize("family", ["if", "sd"])
def test_text_encoder_and_unet_never_share_the_device(family, tiny_if_dir, tiny_prior_dir, tmp_path):
    folder = tiny_if_dir if family == "if" else tiny_prior_dir
    cfg = PriorConfig(negative_prompt="blurry")
    with DeviceHarness():
        prior = load_prior(str(folder), cfg, torch.device("cuda"))
        assert not any(on_device(p) for p in prior.unet.parameters())  # loaded on the host
        calls: list[dict] = []
        watch_encoder(prior, calls)
        prompts = ViewPrompts.build("a red chair", prior, cfg, tmp_path / "cache")
        # Four view prompts and the negative: one encoder call, five distinct rows, UNet away.
        assert calls == [{"rows": len(BUCKETS) + 1, "unet_on_device": False, "encoder_on_device": True}]
        assert prior.text_encoder is None
        loss_fn = SDSLoss(prior, prompts, SDSConfig(guidance_scale=20.0))
        image = torch.rand(1, 32, 32, 3, device="cuda", requires_grad=True)
        loss, _ = loss_fn(image, orbit_cameras([10.0], [30.0], 3.0, 45.0, 32, device="cuda"), 0.5)
        loss.backward()
        assert all(on_device(p) for p in prior.unet.parameters()) and image.grad.device.type == "cuda"
        assert prior.moves == [("text_encoder", "cuda"), ("text_encoder", "cpu"), ("unet", "cuda")]
        # A second build of the same prompt reads the cache: the encoder never loads.
        ViewPrompts.build("a red chair", prior, cfg, tmp_path / "cache")
        assert len(calls) == 1 and prior.text_encoder is None and prior.moves[-1] == ("unet", "cuda")
        # A new prompt takes the UNet off the device before the encoder comes on.
        ViewPrompts.build("a blue lamp", prior, cfg, tmp_path / "cache")
        assert calls[-1] == {"rows": len(BUCKETS) + 1, "unet_on_device": False, "encoder_on_device": True}
        assert prior.moves[3:] == [("unet", "cpu"), ("text_encoder", "cuda"), ("text_encoder", "cpu")]


def test_one_call_embeddings_equal_one_by_one(tiny_if_dir):
    cfg = PriorConfig()
    prior = load_prior(str(tiny_if_dir), cfg, torch.device("cpu"))
    together = prior.encode_prompt(["a red chair, front view", "a red chair, back view"], ["", ""])
    alone = prior.encode_prompt(["a red chair, back view"], [""])
    torch.testing.assert_close(together.cond[1:], alone.cond, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(together.uncond[1:], alone.uncond, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(together.cond[0], together.cond[1])
