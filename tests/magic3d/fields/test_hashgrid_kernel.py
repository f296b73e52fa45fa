"""The hash grid's C kernel: the same values and gradients as the PyTorch path, a cached build,
and the PyTorch path whenever the kernel cannot be built or is turned off."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from magic3d.fields import hashgrid_kernel
from magic3d.fields.encoding import TorchHashEncoding

needs_compiler = pytest.mark.skipif(hashgrid_kernel._compiler() is None, reason="no C compiler on this machine")


def encoding(levels: int, features: int, log2: int, max_res: int) -> TorchHashEncoding:
    torch.manual_seed(0)
    enc = TorchHashEncoding(num_levels=levels, min_res=4, max_res=max_res, log2_hashmap_size=log2,
                            features_per_level=features, implementation="torch")
    with torch.no_grad():
        enc.hash_table.copy_(torch.randn_like(enc.hash_table))
    return enc


def grads(enc: TorchHashEncoding, fn, x: torch.Tensor, w: torch.Tensor):
    enc.hash_table.grad = None
    x = x.clone().requires_grad_(True)
    out = fn(x)
    (out * w).sum().backward()
    return out.detach(), enc.hash_table.grad.clone(), x.grad.clone()


@needs_compiler
@pytest.mark.parametrize("levels,features,log2,max_res", [(6, 2, 10, 200), (4, 4, 8, 64), (3, 1, 12, 32)])
def test_kernel_matches_the_pytorch_path_in_values_and_both_gradients(levels, features, log2, max_res):
    assert hashgrid_kernel.available(), hashgrid_kernel.status()
    enc = encoding(levels, features, log2, max_res)
    x = torch.rand(700, 3)
    x[:20] = torch.round(x[:20] * 4) / 4  # exactly on grid vertices: floor and ceil coincide
    x[20:25] = torch.tensor([0.0, 1.0, 0.5])
    w = torch.randn(levels * features)
    assert hashgrid_kernel.usable(x, enc.hash_table)
    fast = grads(enc, enc.pytorch_fwd, x, w)
    slow = grads(enc, enc.broadcast_fwd, x, w)
    assert fast[0].shape == (700, levels * features)
    assert torch.allclose(fast[0], slow[0], atol=1e-5, rtol=1e-5)
    assert torch.allclose(fast[1], slow[1], atol=1e-5, rtol=1e-5)  # the table
    assert fast[1].abs().sum() > 0
    assert torch.allclose(fast[2], slow[2], atol=1e-3, rtol=1e-4)  # the points (slopes x max_res)


@needs_compiler
def test_kernel_keeps_leading_dimensions_and_leaves_points_without_grad_alone():
    enc = encoding(4, 2, 10, 64)
    x = torch.rand(5, 7, 3)
    out = enc(x)
    assert out.shape == (5, 7, 8)
    assert torch.allclose(out.view(-1, 8), enc.broadcast_fwd(x.view(-1, 3)), atol=1e-5)
    out.sum().backward()
    assert x.grad is None and enc.hash_table.grad is not None


@pytest.mark.parametrize("kernel", ["1", "0"])
def test_no_points_give_no_features_on_either_path(monkeypatch, kernel):
    # A ray batch the occupancy grid empties entirely: "0 D" features and a zero gradient, not a reshape error.
    monkeypatch.setenv("MAGIC3D_CPU_KERNEL", kernel)
    enc = encoding(4, 4, 10, 64)
    out = enc(torch.zeros(0, 3))
    assert out.shape == (0, 16)
    out.sum().backward()
    assert enc.hash_table.grad is not None and not enc.hash_table.grad.any()


def test_other_dtypes_and_devices_take_the_pytorch_path():
    enc = encoding(4, 2, 10, 64)
    assert not hashgrid_kernel.usable(torch.rand(3, 3, dtype=torch.float64), enc.hash_table)
    assert not hashgrid_kernel.usable(torch.rand(3, 3, device="meta"), enc.hash_table)
    wide = torch.zeros(16, hashgrid_kernel.MAX_FEATURES + 1)
    assert not hashgrid_kernel.usable(torch.rand(3, 3), wide)


@needs_compiler
def test_build_is_cached_by_source_and_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("MAGIC3D_KERNEL_DIR", str(tmp_path))
    compiler = hashgrid_kernel._compiler()
    first = hashgrid_kernel._build(compiler)
    stamp = first.stat().st_mtime_ns
    assert first.parent == tmp_path and first.name.startswith("hashgrid-") and first.suffix == ".so"
    assert hashgrid_kernel._build(compiler) == first and first.stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temporary file left behind


# A fresh process, so the module's one-time load sees the environment given.
PROBE = """
import torch
from magic3d.fields import hashgrid_kernel
from magic3d.fields.nerf import FieldConfig, NeRFField
field = NeRFField(FieldConfig(levels=4, log2_hashmap_size=10, max_res=32, hidden=8))
density = field.density(torch.rand(50, 3) * 2 - 1)
density.sum().backward()
assert density.shape == (50,) and field.encoding.hash_table.grad.abs().sum() > 0
print(hashgrid_kernel.status())
"""


@pytest.mark.parametrize("env,expected", [
    ({"MAGIC3D_CPU_KERNEL": "0"}, "not used (turned off by MAGIC3D_CPU_KERNEL=0)"),
    ({"CC": "/bin/false"}, "not used (build failed"),
])
def test_without_the_kernel_the_field_still_trains_on_the_pytorch_path(tmp_path, env, expected):
    full = {**os.environ, "MAGIC3D_KERNEL_DIR": str(tmp_path), **env}
    out = subprocess.run([sys.executable, "-c", PROBE], env=full, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().startswith(expected)
    assert not list(tmp_path.glob("*.so"))
