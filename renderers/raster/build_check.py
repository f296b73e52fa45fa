"""Whether nvdiffrast can be built here, checked cheaply (no compile): what its JIT build needs.

``diffrp-nvdiffrast`` compiles its CUDA plugin with ``torch.utils.cpp_extension`` the first time
it is used; that needs a C++ compiler, ninja, and a CUDA toolkit with headers (``nvcc`` and
``cuda_runtime.h``). ``requirements()`` looks for each; ``advice()`` says how to add what is missing.
Used by ``get_rasterizer``'s fallback warning and by ``magic3d info``.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Requirement:
    name: str
    ok: bool
    detail: str  # what was found, or what is missing
    fix: str  # how to add it ("" when ok)


def _first_line(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return ""
    lines = (out.stdout or out.stderr).strip().splitlines()
    return lines[0].strip() if lines else ""


def check_compiler() -> Requirement:
    candidates = [os.environ.get("CXX", ""), "c++", "g++", "clang++"]
    for name in filter(None, candidates):
        path = shutil.which(name)
        if path:
            version = _first_line([path, "--version"])
            return Requirement("compiler", True, f"{path} ({version or 'version unknown'})", "")
    return Requirement("compiler", False, "no C++ compiler (c++, g++ or $CXX) on PATH",
                       "install a C++ compiler, e.g. `apt-get install g++`")


def check_ninja() -> Requirement:
    path = shutil.which("ninja")
    if path:
        return Requirement("ninja", True, f"{path} ({_first_line([path, '--version']) or 'version unknown'})", "")
    if importlib.util.find_spec("ninja") is not None:
        # The PyPI package puts its binary in the environment's bin folder, which may be off PATH.
        return Requirement("ninja", True, "python package (binary not on PATH)", "")
    return Requirement("ninja", False, "ninja not found (neither a binary on PATH nor the python package)",
                       "install ninja with `pip install ninja`")


def cuda_home() -> Path | None:
    """The CUDA toolkit folder as torch's extension builder finds it: $CUDA_HOME, $CUDA_PATH,
    the folder above ``nvcc`` on PATH, then /usr/local/cuda."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            return Path(os.environ[var])
    nvcc = shutil.which("nvcc")
    if nvcc:
        return Path(nvcc).resolve().parent.parent
    default = Path("/usr/local/cuda")
    return default if default.is_dir() else None


def check_cuda_headers() -> Requirement:
    home = cuda_home()
    fix = "set CUDA_HOME to the CUDA toolkit with headers (the folder holding bin/nvcc and include/cuda_runtime.h)"
    if home is None:
        return Requirement("cuda headers", False, "no CUDA toolkit (CUDA_HOME unset, no nvcc on PATH)", fix)
    nvcc = home / "bin" / "nvcc"
    header = home / "include" / "cuda_runtime.h"
    missing = [str(p) for p in (nvcc, header) if not p.is_file()]
    if missing:
        return Requirement("cuda headers", False, f"CUDA toolkit at {home} lacks {', '.join(missing)}", fix)
    return Requirement("cuda headers", True, f"{home} (nvcc and cuda_runtime.h)", "")


def check_package() -> Requirement:
    try:
        version = importlib.metadata.version("diffrp-nvdiffrast")
        return Requirement("diffrp-nvdiffrast", True, f"installed ({version})", "")
    except importlib.metadata.PackageNotFoundError:
        pass
    if importlib.util.find_spec("nvdiffrast") is not None:
        return Requirement("diffrp-nvdiffrast", True, "nvdiffrast importable (another distribution)", "")
    return Requirement("diffrp-nvdiffrast", False, "not installed",
                       "install it with `pip install diffrp-nvdiffrast`")


def requirements() -> list[Requirement]:
    """Every piece nvdiffrast's first-use build needs, found or not; runs no build."""
    return [check_package(), check_compiler(), check_ninja(), check_cuda_headers()]


def advice(reqs: list[Requirement] | None = None) -> str:
    """One sentence naming what is missing and how to add it; "" when everything is there."""
    missing = [r for r in (reqs if reqs is not None else requirements()) if not r.ok]
    if not missing:
        return ""
    return "nvdiffrast's build needs: " + "; ".join(f"{r.name} ({r.detail}): {r.fix}" for r in missing) + "."


def summary(reqs: list[Requirement] | None = None) -> str:
    """A short line for ``magic3d info``: "ready to build" or what is missing."""
    reqs = reqs if reqs is not None else requirements()
    missing = [r.name for r in reqs if not r.ok]
    if not missing:
        return "ready to build (built on first use on CUDA)"
    return "cannot build here, missing " + ", ".join(missing)
