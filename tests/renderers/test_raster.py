"""The PyTorch rasterizer against analytic scenes, and against nvdiffrast where CUDA exists."""

from __future__ import annotations

import pytest
import torch
import trimesh

from renderers.cameras import orbit_cameras
from renderers.mesh_render import render_mesh
from renderers.raster import TorchRasterizer, get_rasterizer

R = TorchRasterizer()


def clip_of(xy_z: list[list[float]]) -> torch.Tensor:
    return torch.tensor([[[x, y, z, 1.0] for x, y, z in xy_z]], dtype=torch.float64)


def pixel_centres(n: int) -> torch.Tensor:
    return (torch.arange(n, dtype=torch.float64) + 0.5) / n * 2 - 1


def test_triangle_coverage_is_exact_and_barycentrics_sum_to_one():
    n = 32
    clip = clip_of([[-0.8, -0.6, 0.0], [0.7, -0.6, 0.0], [-0.1, 0.9, 0.0]])
    rast = R.rasterize(clip, torch.tensor([[0, 1, 2]]), (n, n))
    ys, xs = torch.meshgrid(pixel_centres(n), pixel_centres(n), indexing="ij")
    a, b, c = clip[0, :, :2]

    def side(p, q):
        return (q[0] - p[0]) * (ys - p[1]) - (q[1] - p[1]) * (xs - p[0])

    e = torch.stack([side(a, b), side(b, c), side(c, a)])
    inside = (e > 0.02).all(0)
    outside = (e < -0.02).any(0)
    covered = rast[0, ..., 3] > 0
    assert covered[inside].all() and not covered[outside].any()
    weights = torch.stack([rast[0, ..., 0], rast[0, ..., 1], 1 - rast[0, ..., 0] - rast[0, ..., 1]])
    assert (weights[:, covered] >= -1e-9).all()
    # Reconstructing pixel centres from the barycentrics recovers them.
    x = weights[0] * a[0] + weights[1] * b[0] + weights[2] * c[0]
    assert torch.allclose(x[covered], xs[covered], atol=1e-9)


def test_nearer_triangle_wins_whatever_the_order():
    near = [[-0.5, -0.5, -0.2], [0.5, -0.5, -0.2], [0.0, 0.5, -0.2]]
    far = [[-0.9, -0.9, 0.5], [0.9, -0.9, 0.5], [0.0, 0.9, 0.5]]
    for order in ((near, far), (far, near)):
        clip = clip_of(order[0] + order[1])
        rast = R.rasterize(clip, torch.tensor([[0, 1, 2], [3, 4, 5]]), (16, 16))
        near_id = 1 if order[0] is near else 2
        assert rast[0, 8, 8, 3] == near_id
        assert rast[0, 8, 8, 2] == pytest.approx(-0.2)
        assert rast[0, 1, 8, 3] == 3 - near_id


def test_unit_cube_coverage_matches_ray_casting():
    cube = trimesh.creation.box(extents=(1, 1, 1))
    cams = orbit_cameras([25.0, -15.0, 60.0], [35.0, 190.0, -70.0], 3.0, 45.0, 48)
    out = render_mesh(torch.tensor(cube.vertices, dtype=torch.float32), torch.tensor(cube.faces), cams,
                      vertex_colors=torch.ones(8, 3), antialias=False, background=0.0)
    origins, dirs = cams.rays()
    # Slab test against the box [-0.5, 0.5]^3.
    inv = 1.0 / dirs
    t0, t1 = (-0.5 - origins) * inv, (0.5 - origins) * inv
    near = torch.minimum(t0, t1).max(-1).values
    far = torch.maximum(t0, t1).min(-1).values
    margin = far - near
    hit = margin > 0.02
    miss = margin < -0.02
    covered = out.alpha[..., 0] > 0
    assert covered[hit].all() and not covered[miss].any()
    assert torch.allclose(out.depth[..., 0][hit], (near * dirs.norm(dim=-1))[hit], atol=1e-3)


def test_interpolate_passes_gradcheck():
    clip = clip_of([[-0.7, -0.6, 0.1], [0.8, -0.5, 0.2], [0.0, 0.8, 0.3]])
    clip[0, :, 3] = torch.tensor([1.0, 1.3, 0.8], dtype=torch.float64)
    faces = torch.tensor([[0, 1, 2]])
    attr = torch.rand(1, 3, 2, dtype=torch.float64, requires_grad=True)
    clip.requires_grad_(True)

    def f(attr, clip):
        return R.interpolate(attr, R.rasterize(clip, faces, (6, 6)), faces)

    assert torch.autograd.gradcheck(f, (attr, clip), eps=1e-6, atol=1e-5)


def test_silhouette_loss_moves_a_square_toward_its_target():
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    def square(lo, hi):
        return torch.tensor([[[lo, lo, 0, 1], [hi, lo, 0, 1], [hi, hi, 0, 1], [lo, hi, 0, 1]]], dtype=torch.float32)

    def coverage(clip):
        rast = R.rasterize(clip, faces, (32, 32))
        ones = (rast[..., 3:4] > 0).float()
        return R.antialias(ones, rast, clip, faces)

    target = coverage(square(-0.6, 0.6)).detach()
    verts = square(-0.3, 0.3).requires_grad_(True)
    opt = torch.optim.Adam([verts], lr=0.02)
    losses = []
    for _ in range(20):
        loss = ((coverage(verts) - target) ** 2).mean()
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[-1] < 0.25 * losses[0]
    corner = verts.detach()[0, 2, :2]
    assert corner.min() > 0.45  # the top-right corner moved out toward (0.6, 0.6)


def test_texture_uses_bottom_left_uv_origin():
    tex = torch.zeros(1, 2, 2, 3)
    tex[0, 0, 0] = torch.tensor([1.0, 0, 0])  # top-left texel
    uv = torch.tensor([[[[0.25, 0.75]]]])
    assert torch.allclose(R.texture(tex, uv, filter="nearest")[0, 0, 0], torch.tensor([1.0, 0, 0]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_backend_agrees_with_torch_backend():
    pytest.importorskip("nvdiffrast.torch", reason="nvdiffrast (the gpu extra, diffrp-nvdiffrast) is not installed")
    sphere = trimesh.creation.icosphere(3, radius=0.8)
    v = torch.tensor(sphere.vertices, dtype=torch.float32)
    f = torch.tensor(sphere.faces, dtype=torch.int32)
    colors = (v + 1) / 2
    cams = orbit_cameras([20.0, -30.0], [0.0, 120.0], 3.0, 45.0, 128)
    gpu_raster = get_rasterizer("cuda", backend="nvdiffrast")
    cpu = render_mesh(v, f, cams, vertex_colors=colors, rasterizer=get_rasterizer("cpu"), antialias=False)
    gpu = render_mesh(v.cuda(), f.cuda(), cams.to("cuda"), vertex_colors=colors.cuda(), rasterizer=gpu_raster,
                      antialias=False)
    tri_cpu, tri_gpu = cpu.rast[..., 3], gpu.rast[..., 3].cpu()
    # Away from edges: pixels both backends give to the same triangle, with all 4 neighbours covered.
    same = (tri_cpu == tri_gpu) & (tri_cpu > 0)
    interior = same.clone()
    interior[:, 1:] &= same[:, :-1]
    interior[:, :-1] &= same[:, 1:]
    interior[:, :, 1:] &= same[:, :, :-1]
    interior[:, :, :-1] &= same[:, :, 1:]
    assert interior.float().mean() > 0.2
    assert (cpu.rast[..., :3] - gpu.rast[..., :3].cpu()).abs()[interior].mean() < 1e-3
    assert (cpu.rgb - gpu.rgb.cpu()).abs()[interior].mean() < 1e-3
    # Textures: same texel-centre convention and the same v flip.
    tex = torch.rand(1, 16, 12, 3)
    uv = torch.rand(2, 20, 20, 2)
    diff = (R.texture(tex, uv) - gpu_raster.texture(tex.cuda(), uv.cuda()).cpu()).abs().mean()
    assert diff < 1e-3


def test_antialiased_vertical_edge_covers_its_pixel_by_the_exact_fraction():
    n = 16
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    for frac in (0.2, 0.45, 0.7, 0.9):
        right = -1 + 2 * (10 + frac) / n  # the edge crosses pixel column 10 at `frac` of its width
        clip = clip_of([[-0.5, -0.6, 0], [right, -0.6, 0], [right, 0.6, 0], [-0.5, 0.6, 0]])
        rast = R.rasterize(clip, faces, (n, n))
        alpha = R.antialias((rast[..., 3:4] > 0).double(), rast, clip, faces)[0, 8, :, 0]
        assert alpha[10].item() == pytest.approx(frac, abs=1e-6)
        assert alpha[9].item() == pytest.approx(1.0) and alpha[11].item() == pytest.approx(0.0)


def test_antialias_leaves_edges_inside_a_surface_alone():
    sphere = trimesh.creation.icosphere(2, radius=0.8)
    v = torch.tensor(sphere.vertices, dtype=torch.float32)
    faces = torch.tensor(sphere.faces)
    cams = orbit_cameras([15.0], [40.0], 3.0, 45.0, 32)
    clip = torch.cat([v, torch.ones(len(v), 1)], -1) @ cams.mvp().transpose(1, 2)
    rast = R.rasterize(clip, faces, (32, 32))
    colour = R.interpolate((v + 1) / 2, rast, faces)
    out = R.antialias(colour, rast, clip, faces)
    covered = rast[0, ..., 3] > 0
    # Pixels whose four neighbours are all on the sphere keep their colour exactly.
    interior = covered.clone()
    interior[1:] &= covered[:-1]
    interior[:-1] &= covered[1:]
    interior[:, 1:] &= covered[:, :-1]
    interior[:, :-1] &= covered[:, 1:]
    assert interior.sum() > 100
    assert torch.equal(out[0][interior], colour[0][interior])
    assert not torch.equal(out[0][covered & ~interior], colour[0][covered & ~interior])


def test_edge_neighbours_of_a_closed_mesh_are_mutual():
    from renderers.raster.torch_backend import edge_neighbours

    box = trimesh.creation.box()
    nb = edge_neighbours(torch.tensor(box.faces))
    assert (nb >= 0).all()
    for f in range(len(box.faces)):
        for k in range(3):
            g = nb[f, k].item()
            assert f in nb[g].tolist() and g != f
    open_quad = edge_neighbours(torch.tensor([[0, 1, 2], [0, 2, 3]]))
    assert open_quad.tolist() == [[-1, -1, 1], [0, -1, -1]]


def test_small_chunks_give_the_same_image_as_one_chunk(monkeypatch):
    import renderers.raster.torch_backend as tb

    sphere = trimesh.creation.icosphere(2, radius=0.8)
    v = torch.tensor(sphere.vertices, dtype=torch.float32)
    faces = torch.tensor(sphere.faces)
    cams = orbit_cameras([15.0, -40.0], [40.0, 200.0], 3.0, 45.0, 24)
    clip = torch.cat([v, torch.ones(len(v), 1)], -1) @ cams.mvp().transpose(1, 2)
    whole = R.rasterize(clip, faces, (24, 24))
    monkeypatch.setattr(tb, "PAIRS_PER_CHUNK", 50)
    chunked = R.rasterize(clip, faces, (24, 24))
    assert torch.equal(whole, chunked)
    assert (whole[..., 3] > 0).float().mean() > 0.3


def test_triangles_behind_the_camera_are_dropped():
    clip = clip_of([[-0.5, -0.5, 0.0], [0.5, -0.5, 0.0], [0.0, 0.5, 0.0]])
    clip[0, 2, 3] = -1.0  # one vertex behind the eye
    rast = R.rasterize(clip, torch.tensor([[0, 1, 2]]), (8, 8))
    assert (rast[..., 3] == 0).all()


def test_get_rasterizer_falls_back_to_torch_with_a_warning(monkeypatch):
    import sys

    assert get_rasterizer("cpu").name == "torch"
    with pytest.raises(ValueError, match="unknown rasterizer backend"):
        get_rasterizer("cpu", backend="opengl")
    monkeypatch.setitem(sys.modules, "nvdiffrast", None)  # importing it now raises ImportError
    monkeypatch.delitem(sys.modules, "renderers.raster.nvdiffrast_backend", raising=False)
    monkeypatch.setattr("renderers.raster._fallback_warned", False)  # warned once per process
    with pytest.warns(UserWarning, match="nvdiffrast unavailable"):
        assert get_rasterizer("cuda").name == "torch"
    with pytest.raises(ImportError):
        get_rasterizer("cuda", backend="nvdiffrast")


def test_texture_is_differentiable_in_texels_and_uv():
    g = torch.Generator().manual_seed(0)
    tex = torch.rand(1, 4, 5, 2, dtype=torch.float64, generator=g).requires_grad_(True)
    # Random samples stay off texel centres, where bilinear filtering has kinks.
    uv = (torch.rand(1, 3, 3, 2, dtype=torch.float64, generator=g) * 0.6 + 0.2).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t, u: R.texture(t, u), (tex, uv), eps=1e-7, atol=1e-5)


# --- nvdiffrast's build requirements (renderers/raster/build_check.py) ----------------------------


@pytest.fixture
def bare_machine(monkeypatch):
    """Nothing nvdiffrast's build needs: no compiler, ninja, CUDA toolkit or package."""
    import importlib.metadata
    import importlib.util

    import renderers.raster.build_check as bc

    monkeypatch.setattr(bc.shutil, "which", lambda name: None)
    for var in ("CUDA_HOME", "CUDA_PATH", "CXX"):
        monkeypatch.delenv(var, raising=False)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(bc.importlib.util, "find_spec",
                        lambda name, *a: None if name in ("ninja", "nvdiffrast") else real_find_spec(name, *a))

    def no_version(name):
        if name == "diffrp-nvdiffrast":
            raise importlib.metadata.PackageNotFoundError(name)
        return importlib.metadata.version(name)

    monkeypatch.setattr(bc.importlib.metadata, "version", no_version)
    monkeypatch.setattr(bc, "cuda_home", lambda: None)
    return bc


def test_build_check_names_every_missing_piece_and_its_fix(bare_machine):
    bc = bare_machine
    reqs = {r.name: r for r in bc.requirements()}
    assert set(reqs) == {"diffrp-nvdiffrast", "compiler", "ninja", "cuda headers"}
    assert not any(r.ok for r in reqs.values())
    text = bc.advice()
    assert "install ninja with `pip install ninja`" in text
    assert "set CUDA_HOME to the CUDA toolkit with headers" in text
    assert "`pip install diffrp-nvdiffrast`" in text
    assert "C++ compiler" in text
    assert bc.summary().startswith("cannot build here, missing diffrp-nvdiffrast, compiler, ninja, cuda headers")


def test_build_check_finds_a_complete_cuda_toolkit(monkeypatch, tmp_path):
    import renderers.raster.build_check as bc

    (tmp_path / "bin").mkdir()
    (tmp_path / "include").mkdir()
    monkeypatch.setenv("CUDA_HOME", str(tmp_path))
    assert not bc.check_cuda_headers().ok  # neither nvcc nor the header yet
    assert "cuda_runtime.h" in bc.check_cuda_headers().detail
    (tmp_path / "bin" / "nvcc").write_text("")
    (tmp_path / "include" / "cuda_runtime.h").write_text("")
    found = bc.check_cuda_headers()
    assert found.ok and str(tmp_path) in found.detail and found.fix == ""


def test_ninja_from_the_python_package_counts(monkeypatch):
    import renderers.raster.build_check as bc

    monkeypatch.setattr(bc.shutil, "which", lambda name: None)
    monkeypatch.setattr(bc.importlib.util, "find_spec", lambda name, *a: object() if name == "ninja" else None)
    assert bc.check_ninja().ok
    monkeypatch.setattr(bc.importlib.util, "find_spec", lambda name, *a: None)
    assert not bc.check_ninja().ok


def test_fallback_warning_says_what_is_missing_once_per_process(monkeypatch, bare_machine):
    import sys
    import warnings

    monkeypatch.setitem(sys.modules, "renderers.raster.nvdiffrast_backend", None)  # import fails
    monkeypatch.setattr("renderers.raster._fallback_warned", False)
    with pytest.warns(UserWarning) as record:
        assert get_rasterizer("cuda").name == "torch"
    text = str(record[0].message)
    assert "nvdiffrast unavailable on cuda" in text and "ModuleNotFoundError" in text
    assert "install ninja with `pip install ninja`" in text
    assert "set CUDA_HOME to the CUDA toolkit with headers" in text
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second fallback in the same process stays quiet
        assert get_rasterizer("cuda").name == "torch"
