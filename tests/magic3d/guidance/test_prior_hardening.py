"""Priors whose files must be refused before any work: pickle-only weights, damaged safetensors
or JSON, missing parts. Each is one PriorError sentence from the cheap check
(``check_prior_available``) naming the file, and one ``error:`` line with exit code 2 from the CLI."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import struct
import time
from pathlib import Path

import pytest
import torch
from prior_checks import UNET_WEIGHTS, make_broken, one_sentence, refusal, run_cli
from safetensors.torch import load_file

from magic3d.errors import PriorError
from magic3d.guidance import PriorConfig, check_prior_available, load_prior
from magic3d.guidance.stable_diffusion import load_component
from magic3d.guidance.weights import safetensors_problem


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


def sharded_text_encoder(folder: Path) -> Path:
    """The text encoder's weights as one shard of two, with the index naming both."""
    part = folder / "text_encoder"
    (part / "model.safetensors").rename(part / "model-00001-of-00002.safetensors")
    index = {"metadata": {}, "weight_map": {"a": "model-00001-of-00002.safetensors",
                                            "b": "model-00002-of-00002.safetensors"}}
    (part / "model.safetensors.index.json").write_text(json.dumps(index))
    return part / "model.safetensors.index.json"


def test_a_shard_missing_from_an_index_is_named(copy_sd):
    sharded_text_encoder(copy_sd)
    assert "incomplete (text_encoder/model-00002-of-00002.safetensors is missing)" in refusal(str(copy_sd))


def test_an_index_without_a_weight_map_is_refused(copy_sd):
    index = sharded_text_encoder(copy_sd)
    index.write_text('{"metadata": {}}')
    message = refusal(str(copy_sd))
    assert str(index) in message and "it has no weight_map" in message


def test_a_dangling_weight_link_is_refused(copy_sd, tmp_path):
    (copy_sd / UNET_WEIGHTS).unlink()
    (copy_sd / UNET_WEIGHTS).symlink_to(tmp_path / "gone.safetensors")
    assert "a link to a file that is gone" in refusal(str(copy_sd))


def test_a_config_value_of_the_wrong_kind_is_one_prior_error(copy_sd):
    config = json.loads((copy_sd / "unet" / "config.json").read_text())
    (copy_sd / "unet" / "config.json").write_text(json.dumps({**config, "sample_size": "big"}))
    with pytest.raises(PriorError) as err:
        load_prior(str(copy_sd), PriorConfig(), torch.device("cpu"))
    assert "has a config value magic3d cannot use (ValueError)" in one_sentence(str(err.value))


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


# --- the CLI: one line, exit 2, nothing written ---------------------------------------------------


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
