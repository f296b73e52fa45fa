"""Shared fixtures: one torch thread, and tiny random Stable-Diffusion- and IF-shaped priors on disk."""

from __future__ import annotations

import importlib.util
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


@pytest.fixture(scope="session")
def tiny_if_dir(tmp_path_factory) -> Path:
    """A tiny random IF-stage-I-shaped pipeline in the hub's layout (T5 tokenizer as spiece.model)."""
    from magic3d.guidance.tiny import TinySizes, build_tiny_if

    return build_tiny_if(tmp_path_factory.mktemp("tiny") / "tiny-if", TinySizes(image_size=16))


@pytest.fixture(scope="session")
def load_script():
    """Import one of ``scripts/*.py`` (not a package) by its file name, without running its main."""
    folder = Path(__file__).resolve().parents[1] / "scripts"

    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load
