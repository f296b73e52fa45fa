"""Tiny random SD- and IF-shaped priors loaded through the real path (the IF folder: tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from magic3d.guidance import PriorConfig, load_prior
from magic3d.guidance.tiny import build_tiny_sd


@pytest.fixture(scope="session")
def tiny_sd_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_sd(tmp_path_factory.mktemp("tiny") / "sd")


@pytest.fixture(scope="module")
def sd_prior(tiny_sd_dir: Path):
    return load_prior(str(tiny_sd_dir), PriorConfig(), torch.device("cpu"))


@pytest.fixture(scope="module")
def if_prior(tiny_if_dir: Path):
    return load_prior(str(tiny_if_dir), PriorConfig(), torch.device("cpu"))
