"""The device harness itself: it must fail on the faults only a GPU shows, and pass what CUDA allows."""

from __future__ import annotations

import pytest
import torch
from device_harness import DeviceHarness, MixedDeviceError


def test_a_host_tensor_meeting_a_device_tensor_fails():
    with DeviceHarness():
        x = torch.randn(4, device="cuda")
        with pytest.raises(MixedDeviceError, match=r"host tensors of shape \(4,\)"):
            x * torch.arange(4)  # no device=: made on the host, as on a real GPU run
        with pytest.raises(MixedDeviceError):
            torch.cat([x, torch.zeros(2)])


def test_what_cuda_allows_passes_and_keeps_the_device():
    with DeviceHarness() as h:
        x = torch.randn(4, device="cuda")
        assert torch.cuda.is_available() and x.device == torch.device("cuda", 0) and x.is_cuda
        assert (x * torch.tensor(2.0)).device.type == "cuda"  # 0-dim host tensors are scalars to CUDA
        assert x[torch.tensor([0, 2])].shape == (2,)  # host index tensors are allowed
        y = torch.zeros(4, device=x.device) + torch.ones_like(x) + x.new_ones(4)
        assert y.device.type == "cuda"
        assert x.cpu().device.type == "cpu" and h.syncs == 1  # device-to-host copy waits for the GPU
        assert torch.arange(3).to(x).device.type == "cuda" and h.uploads == 1
        float(y.sum())
        assert h.syncs == 2 and h.sync_sites["TensorBase.__float__"] == 1
    assert not torch.cuda.is_available() or torch.version.cuda is not None  # patches are undone


def test_host_only_calls_and_cross_device_generators_fail():
    with DeviceHarness():
        x = torch.randn(3, device="cuda")
        with pytest.raises(TypeError, match="numpy"):
            x.numpy()
        with pytest.raises(MixedDeviceError, match="generator"):
            torch.randn(3, device="cuda", generator=torch.Generator().manual_seed(0))
        noise = torch.randn(3, generator=torch.Generator().manual_seed(0)).to(x.device)  # the right way
        assert (x + noise).device.type == "cuda"


def test_modules_optimizers_and_autograd_stay_on_the_device():
    with DeviceHarness():
        net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1)).to("cuda")
        opt = torch.optim.Adam(net.parameters(), lr=1e-2)
        x = torch.randn(5, 3, device="cuda")
        net(x).square().mean().backward()
        opt.step()
        assert all(p.device.type == "cuda" and p.grad.device.type == "cuda" for p in net.parameters())
        assert all(s["exp_avg"].device.type == "cuda" for s in opt.state.values())
        with pytest.raises(MixedDeviceError):
            net(torch.randn(5, 3))  # a host batch into a GPU network
        net.cpu()
        assert net(torch.randn(5, 3)).device.type == "cpu"


def test_it_catches_the_fine_stage_threshold_built_on_the_host(monkeypatch):
    """Defect 1 of issue 18: Otsu's bin centres made on the host; reverting the fix must fail here."""
    from magic3d.fields import dmtet

    density = torch.rand(1000)
    expected = dmtet.otsu_threshold(density)
    with DeviceHarness():
        assert dmtet.otsu_threshold(density.to("cuda")) == pytest.approx(expected)
        real_arange = torch.arange
        monkeypatch.setattr(torch, "arange", lambda *a, **k: real_arange(*a, **{**k, "device": None}))
        with pytest.raises(MixedDeviceError):
            dmtet.otsu_threshold(density.to("cuda"))


def test_tensors_made_from_tensors_keep_their_device():
    with DeviceHarness():
        x = torch.randn(3, device="cuda")
        assert torch.as_tensor(x) is x and x.device.type == "cuda"
        assert torch.tensor(x.tolist()).device.type == "cpu"
        with pytest.raises(MixedDeviceError):
            x + torch.as_tensor([1.0, 2.0, 3.0])
