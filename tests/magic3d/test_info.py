"""magic3d info: versions, devices, and whether nvdiffrast's CUDA build can work here."""

from __future__ import annotations

import renderers.raster.build_check as bc
from magic3d.fields import hashgrid_kernel
from magic3d.info import collect_info, nvdiffrast_build_info


def test_info_reports_each_build_requirement():
    info = collect_info()
    assert "nvdiffrast build" in info
    for name in ("diffrp-nvdiffrast", "compiler", "ninja", "cuda headers"):
        assert f"  {name}" in info
    assert info["cpu hash-grid kernel"] == hashgrid_kernel.status()


def test_info_says_what_is_missing_and_how_to_add_it(monkeypatch):
    monkeypatch.setattr(bc.shutil, "which", lambda name: None)
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(bc.importlib.util, "find_spec", lambda name, *a: None)
    monkeypatch.setattr(bc, "cuda_home", lambda: None)
    info = nvdiffrast_build_info()
    assert info["nvdiffrast build"].startswith("cannot build here, missing")
    assert "ninja" in info["nvdiffrast build"] and "cuda headers" in info["nvdiffrast build"]
    assert info["  ninja"].startswith("missing:") and "`pip install ninja`" in info["  ninja"]
    assert "set CUDA_HOME to the CUDA toolkit with headers" in info["  cuda headers"]
    assert "no C++ compiler" in info["  compiler"]


def test_info_reports_a_complete_toolchain_as_ready(monkeypatch, tmp_path):
    (tmp_path / "bin").mkdir()
    (tmp_path / "include").mkdir()
    (tmp_path / "bin" / "nvcc").write_text("")
    (tmp_path / "include" / "cuda_runtime.h").write_text("")
    monkeypatch.setenv("CUDA_HOME", str(tmp_path))
    monkeypatch.setattr(bc, "check_package", lambda: bc.Requirement("diffrp-nvdiffrast", True, "installed (0.3)", ""))
    monkeypatch.setattr(bc, "check_compiler", lambda: bc.Requirement("compiler", True, "/usr/bin/g++ (12.2)", ""))
    monkeypatch.setattr(bc, "check_ninja", lambda: bc.Requirement("ninja", True, "/usr/bin/ninja (1.11)", ""))
    info = nvdiffrast_build_info()
    assert info["nvdiffrast build"].startswith("ready to build")
    assert info["  cuda headers"].startswith(str(tmp_path))
    assert bc.advice() == ""
