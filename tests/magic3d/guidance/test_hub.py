"""Finding priors offline: empty caches give one clear sentence; cached hub ids load without the network;
fp16 runs fetch and load the fp16 weight variants."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from magic3d.errors import PriorError
from magic3d.guidance import PriorConfig, check_prior_available, load_prior
from magic3d.guidance.hub import hub_cache_dir, resolve_pipeline, select_files, weights_variant
from magic3d.guidance.stable_diffusion import StableDiffusionPrior, load_component

SD21 = "stabilityai/stable-diffusion-2-1-base"


@pytest.fixture
def empty_offline_cache(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "hf"
    home.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    return home


def assert_one_sentence(message: str, home: Path) -> None:
    assert "\n" not in message
    assert message.endswith(".") and message.count(". ") == 0  # one sentence, no traceback
    assert SD21 in message
    assert str(home / "hub") in message
    assert "--prior builtin" in message
    assert "hf download" in message


def test_missing_model_offline_raises_the_one_sentence(empty_offline_cache):
    with pytest.raises(PriorError) as err:
        load_prior(SD21, PriorConfig(), torch.device("cpu"))
    assert_one_sentence(str(err.value), empty_offline_cache)
    with pytest.raises(PriorError) as err:
        check_prior_available(SD21, PriorConfig())
    assert_one_sentence(str(err.value), empty_offline_cache)
    assert not any((empty_offline_cache / "hub").glob("models--*/snapshots/*/*"))  # nothing fetched


def test_local_files_only_is_offline_even_without_the_env(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    with pytest.raises(PriorError, match="hub is offline"):
        check_prior_available(SD21, PriorConfig(local_files_only=True))


def test_hf_hub_cache_overrides_hf_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "elsewhere"))
    assert hub_cache_dir() == tmp_path / "elsewhere"
    monkeypatch.delenv("HF_HUB_CACHE")
    assert hub_cache_dir() == tmp_path / "home" / "hub"


def fake_cached_repo(home: Path, repo_id: str, pipeline: Path) -> Path:
    """Lay a pipeline folder out as huggingface_hub's cache does (refs/main -> snapshots/<commit>)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = home / "hub" / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    shutil.copytree(pipeline, snapshot)
    return snapshot


def test_cached_hub_id_loads_offline_through_the_hub_path(empty_offline_cache, tiny_sd_dir):
    fake_cached_repo(empty_offline_cache, "someone/tiny-sd", tiny_sd_dir)
    check_prior_available("someone/tiny-sd", PriorConfig())
    prior = load_prior("someone/tiny-sd", PriorConfig(), torch.device("cpu"))
    assert isinstance(prior, StableDiffusionPrior)
    assert prior.model_id == "someone/tiny-sd" and prior.resolution == 64


def test_half_downloaded_cache_is_not_available(empty_offline_cache, tmp_path):
    partial = tmp_path / "partial"
    (partial / "unet").mkdir(parents=True)
    (partial / "unet" / "config.json").write_text("{}")
    fake_cached_repo(empty_offline_cache, "someone/partial", partial)
    with pytest.raises(PriorError, match="not in the hub cache"):
        check_prior_available("someone/partial", PriorConfig())


@pytest.mark.parametrize("bad", ["not a model id!", "a/b/c/d"])
def test_names_that_are_neither_folders_nor_hub_ids(bad, empty_offline_cache):
    with pytest.raises(PriorError):
        check_prior_available(bad, PriorConfig())


# --- fp16 weight variants ------------------------------------------------------------------

# The files of DeepFloyd/IF-I-XL-v1.0 as the hub lists them (weights in fp32 and fp16, each as
# safetensors and .bin; the text encoder sharded), less its README and licence.
IF_FILES = [
    ".gitattributes", "model_index.json",
    "feature_extractor/preprocessor_config.json",
    "safety_checker/config.json", "safety_checker/model.safetensors", "safety_checker/model.fp16.safetensors",
    "safety_checker/pytorch_model.bin", "safety_checker/pytorch_model.fp16.bin",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "text_encoder/model-00001-of-00002.safetensors", "text_encoder/model-00002-of-00002.safetensors",
    "text_encoder/model.safetensors.index.json",
    "text_encoder/model.fp16-00001-of-00002.safetensors", "text_encoder/model.fp16-00002-of-00002.safetensors",
    "text_encoder/model.safetensors.index.fp16.json",
    "text_encoder/pytorch_model-00001-of-00002.bin", "text_encoder/pytorch_model-00002-of-00002.bin",
    "text_encoder/pytorch_model.bin.index.json",
    "tokenizer/special_tokens_map.json", "tokenizer/spiece.model", "tokenizer/tokenizer_config.json",
    "unet/config.json", "unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.fp16.safetensors",
    "unet/diffusion_pytorch_model.bin", "unet/diffusion_pytorch_model.fp16.bin",
    "unet/diffusion_pytorch_model.non_ema.safetensors",
    "watermarker/config.json", "watermarker/diffusion_pytorch_model.safetensors",
]
IF_COMMON = [
    "model_index.json", "scheduler/scheduler_config.json", "text_encoder/config.json",
    "tokenizer/special_tokens_map.json", "tokenizer/spiece.model", "tokenizer/tokenizer_config.json",
    "unet/config.json",
]


def test_weights_variant_names():
    assert weights_variant("unet/diffusion_pytorch_model.fp16.safetensors") == "fp16"
    assert weights_variant("text_encoder/model.fp16-00002-of-00002.safetensors") == "fp16"
    assert weights_variant("unet/diffusion_pytorch_model-00001-of-00003.fp16.safetensors") == "fp16"
    assert weights_variant("text_encoder/model.safetensors.index.fp16.json") == "fp16"
    assert weights_variant("unet/diffusion_pytorch_model.non_ema.safetensors") == "non_ema"
    for plain in ("unet/diffusion_pytorch_model.safetensors", "text_encoder/model-00001-of-00002.safetensors",
                  "text_encoder/model.safetensors.index.json"):
        assert weights_variant(plain) is None, plain


def test_fp16_runs_fetch_only_the_fp16_weights():
    assert sorted(select_files(IF_FILES, "fp16")) == sorted([
        *IF_COMMON, "text_encoder/model.fp16-00001-of-00002.safetensors",
        "text_encoder/model.fp16-00002-of-00002.safetensors", "text_encoder/model.safetensors.index.fp16.json",
        "unet/diffusion_pytorch_model.fp16.safetensors",
    ])
    assert sorted(select_files(IF_FILES, None)) == sorted([
        *IF_COMMON, "text_encoder/model-00001-of-00002.safetensors",
        "text_encoder/model-00002-of-00002.safetensors", "text_encoder/model.safetensors.index.json",
        "unet/diffusion_pytorch_model.safetensors",
    ])


def test_components_without_fp16_files_fall_back_to_fp32():
    files = [f for f in IF_FILES if not f.startswith("unet/diffusion_pytorch_model.fp16")]
    chosen = select_files(files, "fp16")
    assert "unet/diffusion_pytorch_model.safetensors" in chosen
    assert "text_encoder/model.fp16-00001-of-00002.safetensors" in chosen
    assert "text_encoder/model-00001-of-00002.safetensors" not in chosen


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """The hub's listing of IF_FILES; snapshot_download filtered by the hub's own pattern matcher.
    Returns the files each download would fetch."""
    import huggingface_hub
    from huggingface_hub.utils import filter_repo_objects

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    snapshot = tmp_path / "snapshot"
    snapshot.mkdir()
    (snapshot / "model_index.json").write_text('{"_class_name": "IFPipeline"}')
    fetched: list[list[str]] = []

    def snapshot_download(repo_id, cache_dir=None, local_files_only=False, allow_patterns=None, **kwargs):
        assert not local_files_only and not kwargs.get("ignore_patterns")
        fetched.append(sorted(filter_repo_objects(IF_FILES, allow_patterns=allow_patterns)))
        return str(snapshot)

    listing = SimpleNamespace(siblings=[SimpleNamespace(rfilename=f) for f in IF_FILES])
    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", lambda self, repo_id, **kw: listing)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return fetched


def test_download_fetches_the_selection_for_the_run_precision(fake_hub):
    for variant in ("fp16", None):  # the fake snapshot holds only model_index.json: found incomplete
        with pytest.raises(PriorError, match="only partly in the hub cache"):
            resolve_pipeline("DeepFloyd/IF-I-XL-v1.0", PriorConfig(), variant=variant)
    assert fake_hub == [sorted(select_files(IF_FILES, "fp16")), sorted(select_files(IF_FILES, None))]


def test_load_prior_on_cpu_downloads_fp32(fake_hub):
    with pytest.raises(PriorError):  # the fake snapshot holds only model_index.json
        load_prior("DeepFloyd/IF-I-XL-v1.0", PriorConfig(dtype="float16"), torch.device("cpu"))
    assert "unet/diffusion_pytorch_model.safetensors" in fake_hub[0]  # CPU runs in fp32 whatever the config


def add_fp16_variants(folder: Path) -> None:
    """Save fp16 variant files next to the fp32 ones, with weights that tell the two apart."""
    from diffusers import UNet2DConditionModel
    from transformers import T5EncoderModel

    unet = UNet2DConditionModel.from_pretrained(folder / "unet")
    torch.nn.init.constant_(unet.conv_in.weight, 0.5)
    unet.half().save_pretrained(folder / "unet", variant="fp16")
    encoder = T5EncoderModel.from_pretrained(folder / "text_encoder")
    torch.nn.init.constant_(encoder.shared.weight, 0.25)
    encoder.half().save_pretrained(folder / "text_encoder", variant="fp16")


def test_fp16_loads_read_the_fp16_files_and_fp32_loads_the_fp32_ones(tiny_if_dir, tmp_path):
    from diffusers import UNet2DConditionModel
    from transformers import T5EncoderModel

    folder = Path(shutil.copytree(tiny_if_dir, tmp_path / "if"))
    add_fp16_variants(folder)
    assert (folder / "unet" / "diffusion_pytorch_model.fp16.safetensors").is_file()
    assert any(weights_variant(p.name) == "fp16" for p in (folder / "text_encoder").iterdir())
    unet = load_component(UNet2DConditionModel, folder / "unet", "m", torch_dtype=torch.float16)
    assert unet.dtype == torch.float16 and bool((unet.conv_in.weight == 0.5).all())
    encoder = load_component(T5EncoderModel, folder / "text_encoder", "m", torch_dtype=torch.float16)
    assert encoder.dtype == torch.float16 and bool((encoder.shared.weight == 0.25).all())
    fp32 = load_component(UNet2DConditionModel, folder / "unet", "m", torch_dtype=torch.float32)
    assert fp32.dtype == torch.float32 and not bool((fp32.conv_in.weight == 0.5).all())


def test_fp16_loads_cast_the_fp32_files_when_there_is_no_variant(tiny_if_dir):
    from diffusers import UNet2DConditionModel

    unet = load_component(UNet2DConditionModel, tiny_if_dir / "unet", "m", torch_dtype=torch.float16)
    want = load_component(UNet2DConditionModel, tiny_if_dir / "unet", "m")
    assert unet.dtype == torch.float16
    assert torch.equal(unet.conv_in.weight, want.conv_in.weight.half())
