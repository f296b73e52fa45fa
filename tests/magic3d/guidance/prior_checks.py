"""Shared by the prior-hardening tests: the one-sentence check, the CLI runner, broken files."""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import pytest

from magic3d import cli
from magic3d.errors import PriorError
from magic3d.guidance import PriorConfig, check_prior_available

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


def run_cli(argv: list[str], capfd: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> tuple[int, str]:
    """Exit code and stderr of ``magic3d ARGV``; stderr at the file-descriptor level, so log lines
    from huggingface_hub (its own handler) would show too."""
    monkeypatch.setattr(sys, "argv", ["magic3d", *argv])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    return exit_info.value.code, capfd.readouterr().err


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
