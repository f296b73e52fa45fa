"""Shared fixtures: one torch thread, and a tiny random Stable-Diffusion-shaped prior on disk."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    # On a shared 2-core machine two torch threads contend with everything else and run many
    # times slower than one; the tests' numbers never depend on the thread count.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_prior_dir(tmp_path_factory) -> Path:
    """The folder ``scripts/make_tiny_prior.py`` writes: loads through the real diffusers path."""
    from magic3d.guidance.tiny import TinySizes, build_tiny_sd

    return build_tiny_sd(tmp_path_factory.mktemp("tiny") / "tiny-sd", TinySizes(image_size=64, seed=0))
