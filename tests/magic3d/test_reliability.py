"""Failures people can act on: CUDA out of memory, over-long prompts, a full disk; and runtime.offload."""

from __future__ import annotations

import errno
import sys
import warnings
from pathlib import Path

import pytest
import torch

from magic3d import cli
from magic3d.config import load_config
from magic3d.errors import RunError
from magic3d.guidance import PriorConfig, load_prior
from magic3d.guidance.tiny import WORDS
from magic3d.pipeline import memory_knobs, out_of_memory_message
from magic3d.storage import atomic_path, atomic_write_text

OOM = "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.10 GiB"


def run_cli(argv: list[str], capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["magic3d", *argv])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    return exit_info.value.code, capsys.readouterr().err


# --- CUDA out of memory -----------------------------------------------------------------------


@pytest.mark.parametrize("stage", ["coarse", "fine"])
def test_out_of_memory_in_a_stage_is_one_line_naming_the_settings_to_lower(stage, tmp_path, capsys, monkeypatch):
    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError(OOM)

    if stage == "fine":
        from magic3d.stages.coarse import CoarseResult

        # A coarse stage that "finished" instantly, so the fine stage is reached without work.
        monkeypatch.setattr("magic3d.stages.coarse.run_coarse", lambda *a, **k: CoarseResult(None, {}))
    monkeypatch.setattr(f"magic3d.stages.{stage}.run_{stage}", out_of_memory)
    code, err = run_cli(
        ["generate", "a red cube", "--prior", "builtin", "--out", str(tmp_path / "out"), "--device", "cpu",
         "--quiet", "--set", f"{stage}.batch_size=4", "--set", f"{stage}.resolution=128"],
        capsys, monkeypatch,
    )
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    line = lines[0]
    assert line.startswith("error: CUDA ran out of memory in the " + stage + " stage")
    assert "out of memory" in line and "2.00 GiB" in line
    assert f"--set {stage}.batch_size=2" in line
    assert f"--set {stage}.resolution=64" in line
    assert "resume" in line
    # The built-in prior is a few MB: offloading it would not help, so it is not suggested.
    assert "runtime.offload" not in line


def test_out_of_memory_advice_names_only_settings_that_lower_that_stages_peak(tiny_prior_dir, tmp_path):
    from magic3d.guidance.tiny import build_tiny_if

    tiny_if = build_tiny_if(tmp_path / "if")
    cfg = load_config("paper", [f"prior.id={tiny_if}", f"prior.fine_id={tiny_prior_dir}", "prior.dtype=float32"])
    fine = out_of_memory_message("fine", cfg, OOM)  # Stable Diffusion: offload moves its VAE decoder away
    assert f"--set fine.resolution={cfg.fine.resolution // 2}" in fine
    assert "--set runtime.offload=true" in fine and "--set prior.dtype=float16" in fine
    # IF has no VAE, and while prompts load the text encoder is alone on the device either way.
    assert "runtime.offload" not in out_of_memory_message("coarse", cfg, OOM)
    assert "runtime.offload" not in out_of_memory_message("load_prior", cfg, OOM)
    assert "--set prior.dtype=float16" in out_of_memory_message("load_prior", cfg, OOM)
    offloaded = load_config("paper", [f"prior.fine_id={tiny_prior_dir}", "runtime.offload=true"])
    assert "runtime.offload=true" not in memory_knobs("fine", offloaded)


def test_out_of_memory_advice_leaves_out_settings_already_at_their_smallest():
    cfg = load_config("builtin", ["coarse.batch_size=1", "coarse.resolution=32", "coarse.samples_per_ray=16"])
    assert memory_knobs("coarse", cfg) == []
    message = out_of_memory_message("coarse", cfg, OOM)
    assert "smallest" in message and "--device cpu" in message
    assert "--set" not in message


# --- runtime.offload --------------------------------------------------------------------------


def test_offload_keeps_the_vae_decoder_on_the_cpu(tiny_prior_dir):
    from device_harness import DeviceHarness, on_device

    with DeviceHarness():
        prior = load_prior(str(tiny_prior_dir), PriorConfig(), torch.device("cuda"), offload=True)
        assert not any(on_device(p) for p in prior.vae.decoder.parameters())
        assert all(on_device(p) for p in prior.vae.encoder.parameters())
        plain = load_prior(str(tiny_prior_dir), PriorConfig(), torch.device("cuda"))
        assert all(on_device(p) for p in plain.vae.decoder.parameters())


def test_runtime_offload_reaches_load_prior(tmp_path, capsys, monkeypatch):
    seen: list[bool] = []

    def fake_load_prior(id_or_path, cfg, device, offload=False):
        seen.append(offload)
        raise RunError("stop here")

    monkeypatch.setattr("magic3d.guidance.load_prior", fake_load_prior)
    code, err = run_cli(["generate", "a red cube", "--prior", "builtin", "--out", str(tmp_path / "out"),
                         "--device", "cpu", "--quiet", "--set", "runtime.offload=true"], capsys, monkeypatch)
    assert code == 2 and "stop here" in err
    assert seen == [True]


# --- over-long prompts ------------------------------------------------------------------------


def known_words_prompt(chars: int) -> str:
    """Words the tiny tokenizers know, cycled up to ``chars`` characters (whole words only)."""
    words, total, i = [], -1, 0
    while total + 1 + len(WORDS[i % len(WORDS)]) <= chars:
        words.append(WORDS[i % len(WORDS)])
        total += 1 + len(words[-1])
        i += 1
    return " ".join(words)


def test_over_long_prompt_encodes_with_a_warning_naming_the_dropped_tokens(tiny_prior_dir):
    prior = load_prior(str(tiny_prior_dir), PriorConfig(), torch.device("cpu"))
    text = known_words_prompt(10_000)
    assert 9_900 < len(text) <= 10_000
    n_tokens = len(prior.tokenizer(text, truncation=False, verbose=False).input_ids)
    limit = prior.max_text_length
    with pytest.warns(UserWarning, match=rf"{n_tokens} tokens long .* reads only {limit}; its last {n_tokens - limit} tokens"):
        emb = prior.encode_prompt([text], [""])
    assert emb.cond.shape == emb.uncond.shape == (1, limit, prior.text_encoder.config.hidden_size)
    assert torch.isfinite(emb.cond).all()


def test_prompts_within_the_limit_encode_without_a_warning(tiny_prior_dir):
    prior = load_prior(str(tiny_prior_dir), PriorConfig(), torch.device("cpu"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prior.encode_prompt(["a red chair, front view"], ["blurry"])


# --- full disk ---------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["write", "fsync"])
def test_full_disk_keeps_the_previous_file_and_leaves_no_temp_file(where, tmp_path, monkeypatch):
    path = tmp_path / "run.json"
    path.write_text('{"status": "done"}', encoding="utf-8")
    before = path.read_bytes()

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    if where == "write":
        real_write = Path.write_bytes

        def half_then_full(self, data):  # a real full disk takes part of the data first
            real_write(self, data[: len(data) // 2])
            disk_full()

        monkeypatch.setattr(Path, "write_bytes", half_then_full)
    else:  # filesystems with delayed allocation report ENOSPC only when the data is flushed
        monkeypatch.setattr("exporters.common.os.fsync", disk_full)

    with pytest.raises(RunError, match="disk is full") as info:
        atomic_write_text(path, '{"status": "running", "padding": "' + "x" * 10_000 + '"}')
    assert str(path) in str(info.value)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]


def test_other_write_errors_are_not_called_a_full_disk(tmp_path):
    path = tmp_path / "a.bin"
    with pytest.raises(PermissionError), atomic_path(path) as tmp:
        tmp.write_bytes(b"partial")
        raise PermissionError(errno.EACCES, "Permission denied")
    assert list(tmp_path.iterdir()) == []
