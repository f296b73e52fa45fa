"""Diffusers priors (SD latent, IF pixel) on tiny random pipelines: exact SDS gradients, guidance, loading."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from magic3d.errors import PriorError
from magic3d.guidance import PriorConfig, check_prior_available, load_prior
from magic3d.guidance.base import SDSConfig, TextEmbeddings
from magic3d.guidance.deepfloyd import DeepFloydPrior
from magic3d.guidance.sds import sample_timesteps
from magic3d.guidance.stable_diffusion import StableDiffusionPrior
from magic3d.guidance.tiny import TinySizes, build_tiny_sd


def expected_grad(prior, x: torch.Tensor, emb: TextEmbeddings, step_ratio: float, cfg: SDSConfig, seed: int):
    """w(t)(eps_hat - eps) recomputed by hand: same seed -> same t then same noise.

    The UNet is evaluated on the same [uncond; cond] batch as the prior does: float32 convs on a
    different batch size differ by ~1e-6, which guidance scales would amplify past 1e-5.
    """
    g = torch.Generator().manual_seed(seed)
    t = sample_timesteps(x.shape[0], step_ratio, cfg, prior.num_train_timesteps, g)
    noise = torch.randn(x.shape, generator=g)
    a = prior.alphas_cumprod[t].view(-1, 1, 1, 1)
    x_t = a.sqrt() * x.detach() + (1 - a).sqrt() * noise
    with torch.no_grad():
        c = x.shape[1]
        both = prior.unet(torch.cat([x_t, x_t]), torch.cat([t, t]),
                          encoder_hidden_states=torch.cat([emb.uncond, emb.cond])).sample[:, :c]
        eps_u, eps_c = both.chunk(2)
    eps_hat = eps_u + cfg.guidance_scale * (eps_c - eps_u)
    if cfg.weighting == "sds":
        w = 1 - a
    elif cfg.weighting == "dreamfusion":
        w = a.sqrt() * (1 - a)
    else:
        w = torch.ones_like(a)
    return w * (eps_hat - noise), t


@pytest.mark.parametrize("which", ["sd", "if"])
@pytest.mark.parametrize("weighting", ["sds", "dreamfusion", "uniform"])
def test_sds_gradient_is_exactly_weighted_noise_residual(which, weighting, request):
    prior = request.getfixturevalue(f"{which}_prior")
    emb = prior.encode_prompt(["a red chair", "a blue cup"], ["", "blurry"])
    images = torch.rand(2, 3, 40, 40, generator=torch.Generator().manual_seed(1))
    x = prior.to_model_input(images).detach().requires_grad_()
    cfg = SDSConfig(guidance_scale=7.5, t_min=0.02, t_max=0.98, weighting=weighting)
    out = prior.sds_on_input(x, emb, 0.25, cfg, torch.Generator().manual_seed(7))
    out.loss.backward()
    want, t = expected_grad(prior, x, emb, 0.25, cfg, seed=7)
    assert torch.equal(out.t, t)
    assert torch.allclose(x.grad, want, atol=1e-5, rtol=0)
    assert float(out.loss) == pytest.approx(0.5 * float((want**2).sum()), rel=1e-4)


@pytest.mark.parametrize("which", ["sd", "if"])
def test_guidance_scale_one_reduces_to_the_conditional_prediction(which, request):
    prior = request.getfixturevalue(f"{which}_prior")
    emb = prior.encode_prompt(["a green lamp"], ["ugly"])
    x = prior.to_model_input(torch.rand(1, 3, 32, 32)).detach().requires_grad_()
    cfg = SDSConfig(guidance_scale=1.0, weighting="uniform")
    prior.sds_on_input(x, emb, 0.0, cfg, torch.Generator().manual_seed(3)).loss.backward()
    g = torch.Generator().manual_seed(3)
    t = sample_timesteps(1, 0.0, cfg, prior.num_train_timesteps, g)
    noise = torch.randn(x.shape, generator=g)
    a = prior.alphas_cumprod[t].view(-1, 1, 1, 1)
    with torch.no_grad():
        eps_c = prior.unet(a.sqrt() * x + (1 - a).sqrt() * noise, t, encoder_hidden_states=emb.cond).sample
    assert torch.allclose(x.grad, eps_c[:, : x.shape[1]] - noise, atol=1e-5, rtol=0)


@pytest.mark.parametrize("which", ["sd", "if"])
def test_gradient_reaches_the_renders_through_resize_and_vae(which, request):
    prior = request.getfixturevalue(f"{which}_prior")
    emb = prior.encode_prompt(["a red chair"], [""])
    images = torch.rand(1, 3, 24, 24, generator=torch.Generator().manual_seed(2)).requires_grad_()
    cfg = SDSConfig(guidance_scale=10.0)
    out = prior.sds(images, emb, 0.5, cfg, torch.Generator().manual_seed(5))
    out.loss.backward()
    x = prior.to_model_input(images)
    want, _ = expected_grad(prior, x, emb, 0.5, cfg, seed=5)
    (vjp,) = torch.autograd.grad(x, images, want)
    assert images.grad.abs().sum() > 0
    assert torch.allclose(images.grad, vjp, atol=1e-5, rtol=1e-4)


def test_perp_neg_views_go_through_the_unet(sd_prior):
    emb = sd_prior.encode_prompt(["a chair, front view"], [""])
    neg = sd_prior.encode_prompt(["a chair, side view", "a chair, back view"], ["", ""]).cond
    with_neg = TextEmbeddings(emb.cond, emb.uncond, neg.unsqueeze(0), torch.tensor([[1.0, 1.0]]))
    zero_w = TextEmbeddings(emb.cond, emb.uncond, neg.unsqueeze(0), torch.zeros(1, 2))
    x = sd_prior.to_model_input(torch.rand(1, 3, 32, 32)).detach()
    cfg = SDSConfig(guidance_scale=20.0)
    grads = []
    for e in (emb, zero_w, with_neg):
        xi = x.clone().requires_grad_()
        sd_prior.sds_on_input(xi, e, 0.5, cfg, torch.Generator().manual_seed(9)).loss.backward()
        grads.append(xi.grad)
    assert torch.allclose(grads[0], grads[1], atol=1e-6)  # weight 0 is plain CFG
    assert not torch.allclose(grads[0], grads[2], atol=1e-4)  # negative views change the gradient


def test_real_loading_path_reads_the_folder(sd_prior, if_prior, tiny_sd_dir):
    assert isinstance(sd_prior, StableDiffusionPrior) and isinstance(if_prior, DeepFloydPrior)
    assert sd_prior.resolution == 64 and if_prior.resolution == 16
    assert sd_prior.dtype == torch.float32 and sd_prior.attention == "sdpa"
    # alphas_cumprod comes from the folder's PNDM config (scaled_linear 0.00085..0.012)
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2
    assert torch.allclose(sd_prior.alphas_cumprod, torch.cumprod(1 - betas, 0), atol=1e-6)
    assert (tiny_sd_dir / "tokenizer" / "vocab.json").is_file() and (tiny_sd_dir / "tokenizer" / "merges.txt").is_file()
    ids = sd_prior.tokenizer("a red chair").input_ids
    assert len(ids) == 5  # bos, three whole-word tokens, eos
    assert json.loads((tiny_sd_dir / "model_index.json").read_text())["_class_name"] == "StableDiffusionPipeline"


def test_text_encoder_frees_and_reloads_with_identical_embeddings(if_prior):
    before = if_prior.encode_prompt(["a small white car"], [""]).cond
    if_prior.free_text_encoder()
    assert if_prior.text_encoder is None
    after = if_prior.encode_prompt(["a small white car"], [""]).cond
    assert torch.equal(before, after)
    assert before.shape == (1, 77, 32)


def test_v_prediction_models_are_scored_as_eps(tmp_path):
    folder = build_tiny_sd(tmp_path / "v", TinySizes(prediction_type="v_prediction"))
    prior = load_prior(str(folder), PriorConfig(), torch.device("cpu"))
    assert prior.prediction_type == "v_prediction"
    emb = prior.encode_prompt(["a cup"], [""])
    x_t, t = torch.randn(1, 4, 8, 8), torch.tensor([600])
    with torch.no_grad():
        v = prior.unet(x_t, t, encoder_hidden_states=emb.cond).sample
    a = prior.alphas_cumprod[t]
    assert torch.allclose(prior.predict_noise(x_t, t, emb.cond), a.sqrt() * v + (1 - a).sqrt() * x_t, atol=1e-6)


def test_local_folder_checks(tmp_path, tiny_sd_dir, tiny_if_dir):
    check_prior_available(str(tiny_sd_dir), PriorConfig())
    check_prior_available(str(tiny_if_dir), PriorConfig())
    (tmp_path / "empty").mkdir()
    with pytest.raises(PriorError, match="no model_index.json"):
        check_prior_available(str(tmp_path / "empty"), PriorConfig())
    with pytest.raises(PriorError, match="does not exist"):
        check_prior_available(str(tmp_path / "missing"), PriorConfig())
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline", "unet": [], "vae": []}')
    with pytest.raises(PriorError, match=r"incomplete \(its tokenizer folder is missing\)"):
        check_prior_available(str(broken), PriorConfig())  # the cheap check, before any work
    with pytest.raises(PriorError, match=r"incomplete \(its tokenizer folder is missing\)"):
        load_prior(str(broken), PriorConfig(), torch.device("cpu"))


def test_other_pipelines_are_refused(tmp_path: Path):
    (tmp_path / "model_index.json").write_text('{"_class_name": "KandinskyPipeline"}')
    with pytest.raises(PriorError, match="KandinskyPipeline"):
        check_prior_available(str(tmp_path), PriorConfig())


def test_in_memory_prior_matches_the_loaded_one(sd_prior):
    twin = StableDiffusionPrior.from_components(sd_prior.unet, sd_prior.vae, sd_prior.alphas_cumprod, PriorConfig(), "cpu")
    assert twin.resolution == sd_prior.resolution == 64
    emb = sd_prior.encode_prompt(["a cup"], [""])
    images = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    cfg = SDSConfig(guidance_scale=5.0)
    a = sd_prior.sds(images, emb, 0.5, cfg, torch.Generator().manual_seed(1))
    b = twin.sds(images, emb, 0.5, cfg, torch.Generator().manual_seed(1))
    assert torch.equal(a.t, b.t) and float(a.loss) == float(b.loss)


def test_if_tokenizer_without_sentencepiece_says_what_to_install(tmp_path):
    import importlib.util

    from magic3d.guidance.deepfloyd import require_sentencepiece_if_needed

    (tmp_path / "spiece.model").write_bytes(b"\0")
    if importlib.util.find_spec("sentencepiece") is None:
        with pytest.raises(PriorError, match="pip install sentencepiece"):
            require_sentencepiece_if_needed(tmp_path, "DeepFloyd/IF-I-XL-v1.0")
    (tmp_path / "tokenizer.json").write_text("{}")
    require_sentencepiece_if_needed(tmp_path, "DeepFloyd/IF-I-XL-v1.0")  # a fast tokenizer file needs nothing
