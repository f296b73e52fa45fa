"""The hash grid's CPU kernel (hashgrid_cpu.c): built once per machine with the system's C
compiler, loaded with ctypes, and wrapped as an autograd function.

It needs no PyTorch headers, so the build takes about a second, not the minutes a torch
extension would; the library is cached under ``$MAGIC3D_KERNEL_DIR`` (default
``~/.cache/magic3d/kernels``), named by a hash of the source and the build command, and written
by rename so that concurrent batch workers never load half a file. Without a compiler, or with
``MAGIC3D_CPU_KERNEL=0``, ``available()`` is false and the encoding keeps its PyTorch path.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import torch
from jaxtyping import Float
from torch import Tensor

SOURCE = Path(__file__).with_name("hashgrid_cpu.c")
MAX_FEATURES = 8  # the kernel's per-level accumulator (hashgrid_cpu.c)
# -ffp-contract=off: no fused multiply-adds, so products round as PyTorch's do.
FLAGS = ("-O3", "-std=c99", "-shared", "-fPIC", "-ffp-contract=off")

_lock = threading.Lock()
_library: ctypes.CDLL | None = None
_failure: str | None = None  # why the kernel is unavailable, once known


def kernel_dir() -> Path:
    configured = os.environ.get("MAGIC3D_KERNEL_DIR")
    return Path(configured) if configured else Path.home() / ".cache" / "magic3d" / "kernels"


def _compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")


def _build(compiler: str) -> Path:
    source = SOURCE.read_bytes()
    key = hashlib.sha256(source + " ".join((compiler, *FLAGS)).encode()).hexdigest()[:16]
    target = kernel_dir() / f"hashgrid-{key}.so"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        subprocess.run([compiler, *FLAGS, str(SOURCE), "-o", tmp, "-lm"], check=True, capture_output=True,
                       timeout=120)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _load() -> ctypes.CDLL | None:
    global _library, _failure
    with _lock:
        if _library is not None or _failure is not None:
            return _library
        if os.environ.get("MAGIC3D_CPU_KERNEL", "1") == "0":
            _failure = "turned off by MAGIC3D_CPU_KERNEL=0"
            return None
        compiler = _compiler()
        if compiler is None:
            _failure = "no C compiler (cc, gcc or clang) on PATH"
            return None
        try:
            lib = ctypes.CDLL(str(_build(compiler)))
        except (OSError, subprocess.SubprocessError) as exc:
            detail = getattr(exc, "stderr", b"") or b""
            _failure = f"build failed: {(detail.decode(errors='replace').strip() or str(exc)).splitlines()[0]}"
            return None
        size, i32, ptr = ctypes.c_int64, ctypes.c_int32, ctypes.c_void_p
        lib.hashgrid_forward.argtypes = [ptr, ptr, ptr, size, i32, i32, size, ptr]
        lib.hashgrid_backward.argtypes = [ptr, ptr, ptr, ptr, size, i32, i32, size, ptr, ptr]
        lib.hashgrid_forward.restype = lib.hashgrid_backward.restype = None
        _library = lib
        return lib


def available() -> bool:
    return _load() is not None


def status() -> str:
    """One line for ``magic3d info``: whether the kernel runs, or why not."""
    return "compiled" if available() else f"not used ({_failure})"


def usable(points: Tensor, table: Tensor) -> bool:
    """Whether this call can take the kernel: CPU float32 tensors and at most MAX_FEATURES a level."""
    return (points.device.type == "cpu" and table.device.type == "cpu" and points.dtype == torch.float32
            and table.dtype == torch.float32 and table.shape[1] <= MAX_FEATURES and available())


class _HashGridFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, points: Tensor, table: Tensor, scales: Tensor, levels: int, table_size: int) -> Tensor:
        points, table, scales = points.contiguous(), table.contiguous(), scales.contiguous()
        features = table.shape[1]
        out = torch.empty(points.shape[0], levels * features, dtype=torch.float32, device=points.device)
        _library.hashgrid_forward(points.data_ptr(), table.data_ptr(), scales.data_ptr(), points.shape[0],
                                  levels, features, table_size, out.data_ptr())
        ctx.save_for_backward(points, table, scales)
        ctx.levels, ctx.table_size = levels, table_size
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        points, table, scales = ctx.saved_tensors
        grad = grad.contiguous().float()
        grad_table = torch.zeros_like(table)
        grad_points = torch.empty_like(points) if ctx.needs_input_grad[0] else None
        _library.hashgrid_backward(points.data_ptr(), table.data_ptr(), scales.data_ptr(), grad.data_ptr(),
                                   points.shape[0], ctx.levels, table.shape[1], ctx.table_size,
                                   grad_table.data_ptr(), grad_points.data_ptr() if grad_points is not None else None)
        return grad_points, grad_table, None, None, None


def hashgrid_lookup(
    points: Float[Tensor, "N 3"], table: Float[Tensor, "LT F"], scales: Float[Tensor, " L"], table_size: int,
) -> Float[Tensor, "N LF"]:
    """Features of ``points`` in [0, 1] from a hash ``table`` of ``len(scales)`` levels of
    ``table_size`` rows each; differentiable in the table and the points. Callers check ``usable``."""
    return _HashGridFunction.apply(points, table, scales.float(), int(scales.shape[0]), int(table_size))
