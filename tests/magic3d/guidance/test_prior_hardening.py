"""Priors that must be refused before any work: pickle-only weights, damaged safetensors or JSON,
an unwritable hub cache, an unreachable hub. Each is one PriorError sentence from the cheap
check (``check_prior_available``), and one ``error:`` line with exit code 2 from the CLI."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import socket
import struct
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from magic3d import cli
from magic3d.errors import PriorError
from magic3d.guidance import PriorConfig, check_prior_available, load_prior
from magic3d.guidance.stable_diffusion import load_component
from magic3d.guidance.weights import safetensors_problem

SD21 = "stabilityai/stable-diffusion-2-1-base"
UNET_WEIGHTS = "unet/diffusion_pytorch_model.safetensors"


def one_sentence(message: str) -> str:
    assert "\n" not in message and "Traceback" not in message
    assert message.endswith(".") and ". " not in message, message
    return message


def refusal(id_or_path: str) -> str:
    """The cheap check's message for a prior it must refuse."""
    with pytest.raises(PriorError) as err:
        check_prior_available(id_or_path, PriorConfig())
    return one_sentence(str(err.value))


@pytest.fixture
def copy_sd(tiny_sd_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_sd_dir, tmp_path / "sd"))


# --- safetensors only -----------------------------------------------------------------------


def test_the_tiny_folder_passes_and_every_network_loads_with_use_safetensors(tiny_sd_dir, monkeypatch):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    check_prior_available(str(tiny_sd_dir), PriorConfig())
    calls: dict[str, object] = {}
    for cls in (UNet2DConditionModel, AutoencoderKL, CLIPTextModel):
        original = cls.from_pretrained.__func__

        def recording(klass, *args, _original=original, **kwargs):
            calls[klass.__name__] = kwargs.get("use_safetensors")
            return _original(klass, *args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", classmethod(recording))
    prior = load_prior(str(tiny_sd_dir), PriorConfig(), torch.device("cpu"))
    prior.load_text_encoder()  # loaded lazily, for the one call that encodes the prompts
    assert calls == {"UNet2DConditionModel": True, "AutoencoderKL": True, "CLIPTextModel": True}


def test_safetensors_are_read_when_a_pickle_sits_beside_them(copy_sd):
    """A .bin next to the .safetensors (as on the hub) is never the one loaded."""
    state = load_file(copy_sd / UNET_WEIGHTS)
    torch.save({k: torch.full_like(v, 0.5) for k, v in state.items()}, copy_sd / "unet" / "diffusion_pytorch_model.bin")
    check_prior_available(str(copy_sd), PriorConfig())
    prior = load_prior(str(copy_sd), PriorConfig(), torch.device("cpu"))
    assert torch.equal(prior.unet.conv_in.weight, state["conv_in.weight"])


@pytest.mark.parametrize("component, pickle_name", [
    ("unet", "diffusion_pytorch_model.bin"),
    ("text_encoder", "pytorch_model.bin"),
    ("vae", "diffusion_pytorch_model.ckpt"),
])
def test_pickle_only_components_are_refused_before_anything_is_unpickled(copy_sd, component, pickle_name, tmp_path):
    part = copy_sd / component
    (weights,) = part.glob("*.safetensors")
    torch.save(load_file(weights), part / pickle_name)
    weights.unlink()
    message = refusal(str(copy_sd))
    assert f"The {component} of prior" in message and pickle_name in message
    assert "safe_serialization=True" in message
    with pytest.raises(PriorError, match="only pickle weights"):
        load_prior(str(copy_sd), PriorConfig(), torch.device("cpu"))


class Payload:
    """What an attacker's .bin holds: unpickling it creates a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_malicious_pickle_is_never_opened(copy_sd, tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    with open(copy_sd / "unet" / "diffusion_pytorch_model.bin", "wb") as f:
        pickle.dump(Payload(marker), f)
    (copy_sd / UNET_WEIGHTS).unlink()
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load was called on a pickle"))
    assert "diffusion_pytorch_model.bin" in refusal(str(copy_sd))
    from diffusers import UNet2DConditionModel

    with pytest.raises(PriorError, match="only pickle weights"):  # the load path refuses too
        load_component(UNet2DConditionModel, copy_sd / "unet", "m")
    assert not marker.exists()


# --- damaged weight files, read by their header only ---------------------------------------------


def make_broken(path: Path, kind: str) -> None:
    """Damage the safetensors file at ``path`` in the way ``kind`` names."""
    data = path.read_bytes()
    if kind == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif kind == "git-lfs pointer":  # what a clone without git-lfs leaves
        path.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:" + "0" * 64 + "\nsize 3463726498\n")
    elif kind == "header not JSON":
        path.write_bytes(struct.pack("<Q", 32) + b"{this is not json at all........" + b"\0" * 64)
    elif kind == "header length too big":
        path.write_bytes(struct.pack("<Q", 2 * len(data)) + data[8:])
    elif kind == "offsets past the end":
        header = json.dumps({"w": {"dtype": "F32", "shape": [1000], "data_offsets": [0, 4000]}}).encode()
        path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 400)
    elif kind == "bytes after the last tensor":
        path.write_bytes(data + b"\0" * 16)
    elif kind == "empty":
        path.write_bytes(b"")
    else:
        raise ValueError(kind)


BROKEN = ["truncated", "git-lfs pointer", "header not JSON", "header length too big", "offsets past the end",
          "bytes after the last tensor", "empty"]
WHY = {"truncated": "truncated", "git-lfs pointer": "header length says", "header not JSON": "header is not JSON",
       "header length too big": "header length says", "offsets past the end": "truncated",
       "bytes after the last tensor": "16 bytes after its last tensor", "empty": "fewer than the 8"}


@pytest.mark.parametrize("kind", BROKEN)
def test_damaged_safetensors_are_refused_by_the_cheap_check(copy_sd, kind):
    path = copy_sd / UNET_WEIGHTS
    make_broken(path, kind)
    with pytest.raises(Exception):  # noqa: B017 - the safetensors library refuses each one too
        load_file(path)
    message = refusal(str(copy_sd))
    assert str(path) in message and "is damaged" in message and WHY[kind] in message


@pytest.mark.parametrize("component", ["text_encoder", "vae"])
def test_every_network_of_the_pipeline_is_checked(copy_sd, component):
    (path,) = (copy_sd / component).glob("*.safetensors")
    make_broken(path, "truncated")
    assert str(path) in refusal(str(copy_sd))


def test_the_header_check_reads_no_tensor_data(tmp_path):
    """A 16 GiB file (sparse: the bytes are never written) is judged whole or truncated at once."""
    n = 4 * 2**30
    header = json.dumps({"w": {"dtype": "F32", "shape": [n], "data_offsets": [0, 4 * n]}}).encode()
    path = tmp_path / "big.safetensors"
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(header)) + header)
        try:
            f.truncate(8 + len(header) + 4 * n)
        except OSError:
            pytest.skip("this file system has no sparse files")
    clock = time.perf_counter()
    assert safetensors_problem(path) is None
    os.truncate(path, 8 + len(header) + 4 * n - 4)
    assert "truncated" in safetensors_problem(path)
    assert time.perf_counter() - clock < 1.0


@pytest.mark.parametrize("file, text, why", [
    ("unet/config.json", '{"_class_name": "UNet2DConditionModel", ', "is not valid JSON"),
    ("text_encoder/config.json", "\xff\xfe garbage", "is not valid JSON"),
    ("scheduler/scheduler_config.json", "[1, 2, 3]", "is not a JSON object"),
    ("tokenizer/tokenizer_config.json", "", "is not valid JSON"),
])
def test_component_json_that_does_not_parse_is_refused(copy_sd, file, text, why):
    (copy_sd / file).write_text(text, encoding="latin-1")
    message = refusal(str(copy_sd))
    assert str(copy_sd / file) in message and why in message


def test_a_missing_network_is_named(copy_sd):
    (copy_sd / UNET_WEIGHTS).unlink()
    assert "incomplete (the unet weight file is missing)" in refusal(str(copy_sd))


@pytest.mark.parametrize("kind", ["truncated", "header not JSON", "bytes after the last tensor"])
def test_loading_past_the_check_still_fails_as_one_prior_error(copy_sd, kind, monkeypatch):
    """Should a damaged file get past the cheap check (it changed in between), the load says so in
    one sentence, not with the loader's own exception."""
    monkeypatch.setattr("magic3d.guidance.hub.check_pipeline_files", lambda *a, **k: None)
    make_broken(copy_sd / "text_encoder" / "model.safetensors", kind)
    make_broken(copy_sd / UNET_WEIGHTS, kind)
    with pytest.raises(PriorError) as err:
        load_prior(str(copy_sd), PriorConfig(), torch.device("cpu"))
    assert "The unet of prior" in one_sentence(str(err.value)) and err.value.__cause__ is None
    from transformers import CLIPTextModel

    with pytest.raises(PriorError, match="The text_encoder of prior .* could not be loaded"):
        load_component(CLIPTextModel, copy_sd / "text_encoder", "m")


# --- hub ids: the cache must take files, the hub must answer quickly --------------------------------


@pytest.fixture
def online(tmp_path, monkeypatch):
    """A connected machine as far as magic3d can tell; the hub is whatever ``hub.answer`` says."""
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


# --- the CLI: one line, exit 2, nothing written ---------------------------------------------------


def run_cli(argv: list[str], capfd: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> tuple[int, str]:
    """Exit code and stderr of ``magic3d ARGV``; stderr at the file-descriptor level, so log lines
    from huggingface_hub (its own handler) would show too."""
    monkeypatch.setattr(sys, "argv", ["magic3d", *argv])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    return exit_info.value.code, capfd.readouterr().err


def break_pickle_only(folder: Path) -> str:
    torch.save(load_file(folder / UNET_WEIGHTS), folder / "unet" / "diffusion_pytorch_model.bin")
    (folder / UNET_WEIGHTS).unlink()
    return "diffusion_pytorch_model.bin"


def break_truncated(folder: Path) -> str:
    make_broken(folder / UNET_WEIGHTS, "truncated")
    return str(folder / UNET_WEIGHTS)


def break_config(folder: Path) -> str:
    (folder / "vae" / "config.json").write_text("{oops")
    return str(folder / "vae" / "config.json")


@pytest.mark.parametrize("breaker", [break_pickle_only, break_truncated, break_config])
def test_generate_with_a_broken_prior_exits_2_with_one_line_and_writes_nothing(
    breaker, copy_sd, tmp_path, capfd, monkeypatch
):
    mention = breaker(copy_sd)
    out = tmp_path / "out"
    code, err = run_cli(["generate", "a red cube", "--prior", str(copy_sd), "--out", str(out)], capfd, monkeypatch)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err
    assert len(lines[0]) <= 300, lines[0]
    assert lines[0].startswith("error: ") and mention in lines[0]
    assert not out.exists()


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
