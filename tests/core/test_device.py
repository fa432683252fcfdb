"""Device resolution: auto fallbacks, clear errors for missing GPUs, labels (CUDA simulated)."""

from __future__ import annotations

import pytest
import torch

from napari_difftt.core import device as device_module
from napari_difftt.core.device import DeviceInfo, describe, list_devices, resolve_device


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(device_module, "_mps_available", lambda: False)


@pytest.fixture
def two_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: f"NVIDIA H100 #{i}")
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i: (int(70.2 * 2**30), 80 * 2**30))


def test_auto_falls_back_to_cpu(no_gpu):
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device() == torch.device("cpu")


def test_auto_prefers_cuda_then_mps(monkeypatch, two_gpus):
    assert resolve_device("auto") == torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(device_module, "_mps_available", lambda: True)
    assert resolve_device("auto") == torch.device("mps")


def test_explicit_specs(two_gpus):
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(" CUDA ") == torch.device("cuda", 0)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


# ids avoid the word "cuda": the suite skips every test whose keywords contain it
@pytest.mark.parametrize("spec", ["cuda", "cuda:1"], ids=["bare", "indexed"])
def test_cuda_without_gpu_is_a_clear_error(no_gpu, spec):
    with pytest.raises(RuntimeError, match=r"CUDA was requested \(cuda(:1)?\) but no CUDA device"):
        resolve_device(spec)


def test_cuda_index_out_of_range(two_gpus):
    with pytest.raises(RuntimeError, match=r"CUDA was requested \(cuda:2\) but only 2 CUDA"):
        resolve_device("cuda:2")


def test_mps_without_mps(no_gpu):
    with pytest.raises(RuntimeError, match="mps was requested"):
        resolve_device("mps")


@pytest.mark.parametrize("spec", ["gpu", "cuda:x", "cuda:-1", ""])
def test_unknown_spec(spec):
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device(spec)


def test_non_string_spec():
    with pytest.raises(TypeError, match="device must be a string"):
        resolve_device(0)


def test_list_devices_cpu_only(no_gpu):
    threads = torch.get_num_threads()
    assert list_devices() == [
        DeviceInfo("auto", f"auto (cpu ({threads} threads))"),
        DeviceInfo("cpu", f"CPU ({threads} threads)"),
    ]
    assert describe("cpu") == f"cpu ({threads} threads)"


def test_list_devices_with_gpus(two_gpus):
    devices = list_devices()
    assert [d.spec for d in devices] == ["auto", "cpu", "cuda:0", "cuda:1"]
    assert devices[0].label == "auto (cuda:0 · NVIDIA H100 #0)"
    assert devices[3].label == "cuda:1 · NVIDIA H100 #1 · 70.2 GiB free"
    assert describe("cuda:1") == "cuda:1 · NVIDIA H100 #1"


def test_free_memory_failure_keeps_label(monkeypatch, two_gpus):
    def busy(index):
        raise RuntimeError("CUDA error: all CUDA-capable devices are busy")

    monkeypatch.setattr(torch.cuda, "mem_get_info", busy)
    assert list_devices()[2].label == "cuda:0 · NVIDIA H100 #0"


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_real_cuda_device():
    assert resolve_device("auto").type == "cuda"
    labels = {d.spec: d.label for d in list_devices()}
    assert labels["cuda:0"].startswith("cuda:0 · ") and labels["cuda:0"].endswith("GiB free")
    assert torch.ones(2, device=resolve_device("cuda")).sum().item() == 2
