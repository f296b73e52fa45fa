"""Finding priors offline: empty caches give one clear sentence; cached hub ids load without the network."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from magic3d.errors import PriorError
from magic3d.guidance import PriorConfig, check_prior_available, load_prior
from magic3d.guidance.hub import hub_cache_dir
from magic3d.guidance.stable_diffusion import StableDiffusionPrior

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
    with pytest.raises(PriorError, match="not in the local cache"):
        check_prior_available("someone/partial", PriorConfig())


@pytest.mark.parametrize("bad", ["not a model id!", "a/b/c/d"])
def test_names_that_are_neither_folders_nor_hub_ids(bad, empty_offline_cache):
    with pytest.raises(PriorError):
        check_prior_available(bad, PriorConfig())
