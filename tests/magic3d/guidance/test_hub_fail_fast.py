"""Hub ids fail fast and in one line: an unwritable cache (HF_HOME, HF_HUB_CACHE), a hub that
refuses or never answers, pickle-only repositories and damaged cached snapshots, all before any
download and before anything is written."""

from __future__ import annotations

import os
import shutil
import socket
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from prior_checks import UNET_WEIGHTS, make_broken, refusal, run_cli

from magic3d.errors import PriorError
from magic3d.guidance import PriorConfig, load_prior

SD21 = "stabilityai/stable-diffusion-2-1-base"


@pytest.fixture
def online(tmp_path, monkeypatch):
    """HF_HUB_OFFLINE unset, for magic3d and for huggingface_hub (which read it at import)."""
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # read at import by huggingface_hub
    return monkeypatch


def timed_refusal(id_or_path: str, limit: float = 5.0) -> str:
    clock = time.perf_counter()
    message = refusal(id_or_path)
    assert time.perf_counter() - clock < limit
    return message


def test_unwritable_hf_home_is_refused_before_the_hub_is_asked(online, tmp_path):
    import huggingface_hub

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    online.setenv("HF_HOME", str(blocker / "hf"))
    online.setattr(huggingface_hub.HfApi, "model_info", lambda *a, **k: pytest.fail("the hub was asked"))
    message = timed_refusal(SD21)
    assert str(blocker / "hf" / "hub") in message and "from HF_HOME" in message
    assert "a part of its path is a file" in message and "set HF_HOME to a writable folder" in message
    with pytest.raises(PriorError, match="cannot be written"):
        load_prior(SD21, PriorConfig(), torch.device("cpu"))


def test_unwritable_hf_hub_cache_names_hf_hub_cache(online, tmp_path):
    cache = tmp_path / "cache-is-a-file"
    cache.write_text("")
    online.setenv("HF_HUB_CACHE", str(cache))
    message = timed_refusal(SD21)
    assert f"{str(cache)!r} (from HF_HUB_CACHE)" in message and "it is a file" in message


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_hf_home_is_refused(online, tmp_path):
    home = tmp_path / "ro"
    (home / "hub").mkdir(parents=True)
    (home / "hub").chmod(0o555)
    online.setenv("HF_HOME", str(home))
    try:
        assert "permission denied" in timed_refusal(SD21)
    finally:
        (home / "hub").chmod(0o755)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_hub_that_refuses_connections_is_one_line_at_once(online, tmp_path):
    from huggingface_hub import constants

    online.setenv("HF_HOME", str(tmp_path / "hf"))
    online.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{free_port()}")
    message = timed_refusal(SD21, limit=3.0)
    assert "the hub could not be reached (ConnectError)" in message


def test_a_hub_that_never_answers_times_out_without_retries(online, tmp_path):
    """A black-holed connection: the metadata request waits HF_HUB_ETAG_TIMEOUT once, not 60 s five times."""
    from huggingface_hub import constants

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # connections complete, nothing ever answers
        online.setenv("HF_HOME", str(tmp_path / "hf"))
        online.setenv("HF_HUB_ETAG_TIMEOUT", "1")
        online.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{silent.getsockname()[1]}")
        message = timed_refusal(SD21, limit=4.0)
    assert "the hub could not be reached (ReadTimeout)" in message


def test_generate_with_an_unwritable_hf_home_exits_2_in_one_line(online, tmp_path, capfd):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    online.setenv("HF_HOME", str(blocker / "hf"))
    out = tmp_path / "out"
    clock = time.perf_counter()
    code, err = run_cli(["generate", "a red cube", "--prior", SD21, "--out", str(out)], capfd, online)
    assert time.perf_counter() - clock < 5.0
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err
    assert len(lines[0]) <= 300, lines[0]
    assert "HF_HOME" in lines[0] and str(blocker / "hf" / "hub") in lines[0]
    assert not out.exists()


def test_generate_with_an_unreachable_hub_exits_2_in_one_line(online, tmp_path, capfd):
    from huggingface_hub import constants

    online.setenv("HF_HOME", str(tmp_path / "hf"))
    online.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{free_port()}")
    out = tmp_path / "out"
    code, err = run_cli(["generate", "a red cube", "--prior", SD21, "--out", str(out)], capfd, online)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err  # no "Retrying in 1s" lines from the hub client
    assert len(lines[0]) <= 300, lines[0]
    assert "could not be reached" in lines[0]
    assert not out.exists()


# --- cached snapshots and hub listings are checked like local folders ----------------------------


def cached_repo(home: Path, repo_id: str, pipeline: Path) -> Path:
    """``pipeline`` laid out as huggingface_hub's cache does (blobs linked from snapshots/<commit>)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = home / "hub" / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    shutil.copytree(pipeline, snapshot)
    blob = repo / "blobs" / "unet-weights"
    blob.parent.mkdir()
    (snapshot / UNET_WEIGHTS).rename(blob)
    (snapshot / UNET_WEIGHTS).symlink_to(blob)
    return snapshot


@pytest.fixture
def offline_cache(tmp_path, monkeypatch, tiny_sd_dir) -> Path:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    return cached_repo(tmp_path / "hf", "someone/tiny-sd", tiny_sd_dir)


def test_a_whole_cached_snapshot_passes(offline_cache):
    prior = load_prior("someone/tiny-sd", PriorConfig(), torch.device("cpu"))
    assert prior.resolution == 64 and prior.model_id == "someone/tiny-sd"


def test_a_damaged_cached_snapshot_is_refused_naming_the_file(offline_cache):
    make_broken((offline_cache / UNET_WEIGHTS).resolve(), "truncated")
    assert str(offline_cache / UNET_WEIGHTS) in refusal("someone/tiny-sd")


def test_a_cached_snapshot_whose_blob_was_deleted_is_refused(offline_cache):
    (offline_cache / UNET_WEIGHTS).resolve().unlink()
    message = refusal("someone/tiny-sd")
    assert str(offline_cache / UNET_WEIGHTS) in message and "a link to a file that is gone" in message


def test_a_pickle_only_cached_snapshot_is_refused(offline_cache):
    (offline_cache / "text_encoder" / "model.safetensors").rename(offline_cache / "text_encoder" / "pytorch_model.bin")
    assert "The text_encoder of prior 'someone/tiny-sd' has only pickle weights" in refusal("someone/tiny-sd")


def test_a_partly_cached_snapshot_offline_names_what_is_missing(offline_cache):
    shutil.rmtree(offline_cache / "vae")
    assert "only partly in the hub cache" in refusal("someone/tiny-sd")
    with pytest.raises(PriorError, match=r"\(its vae folder is missing\)"):
        load_prior("someone/tiny-sd", PriorConfig(), torch.device("cpu"))


def test_a_pickle_only_hub_repository_is_refused_before_any_download(online, tmp_path):
    import huggingface_hub

    online.setenv("HF_HOME", str(tmp_path / "hf"))
    files = ["model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.bin",
             "vae/config.json", "vae/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.bin"]
    listing = SimpleNamespace(siblings=[SimpleNamespace(rfilename=f) for f in files])
    online.setattr(huggingface_hub.HfApi, "model_info", lambda self, repo_id, **kw: listing)
    def snapshot_download(*args, local_files_only=False, **kwargs):
        assert local_files_only, "something was downloaded"
        raise huggingface_hub.errors.LocalEntryNotFoundError("not cached")

    online.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    online.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: pytest.fail("something was downloaded"))
    message = refusal("someone/pickles")
    assert "The unet of prior 'someone/pickles' has only pickle weights (diffusion_pytorch_model.bin)" in message
    with pytest.raises(PriorError, match="only pickle weights"):
        load_prior("someone/pickles", PriorConfig(), torch.device("cpu"))
