"""Device and precision choice (mocked GPUs), CUDA fast-path settings, seeded generators."""

from pathlib import Path

import pytest
import torch

from simclr.runtime import compute as runtime

REAL_BF16_PROBE = runtime.cpu_has_bf16  # before any fixture fakes the CPU kind


@pytest.mark.parametrize("capability, emulated, expected", [
    ((7, 0), True, "fp16"),  # V100: is_bf16_supported() says True (emulation), bf16 is slow
    ((7, 5), True, "fp16"),  # T4
    ((8, 0), True, "bf16"),  # A100
    ((9, 0), True, "bf16"),  # H100 / H200
])
def test_auto_precision_on_cuda_follows_compute_capability(monkeypatch, capability, emulated,
                                                           expected):
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True:
                        emulated if including_emulation else capability >= (8, 0))
    assert runtime.resolve_precision("auto", torch.device("cuda")) == expected
    assert runtime.resolve_precision("fp32", torch.device("cuda")) == "fp32"  # explicit wins


def test_auto_precision_on_cpu(monkeypatch):
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: False)
    assert runtime.resolve_precision("auto", torch.device("cpu")) == "fp32"
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: True)
    assert runtime.resolve_precision("auto", torch.device("cpu")) == "bf16"


@pytest.mark.skipif(not Path("/proc/cpuinfo").exists(), reason="needs Linux's /proc/cpuinfo")
def test_the_bf16_probe_reads_this_cpus_flags():
    """The probe is what the kernel says of this CPU: AVX512-BF16 or AMX (so an AVX2-only CPU
    gets fp32, a Zen 4 or Sapphire Rapids bf16)."""
    flags = next((line.split(":", 1)[1].split() for line in
                  Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), [])
    assert REAL_BF16_PROBE() == ("avx512_bf16" in flags or "amx_tile" in flags), flags


@pytest.fixture
def cuda_flags():
    """Save and restore the global cuDNN / cuBLAS switches a test changes."""
    matmul = torch.backends.cuda.matmul
    saved = torch.backends.cudnn.benchmark, matmul.allow_tf32
    torch.backends.cudnn.benchmark, matmul.allow_tf32 = False, False
    yield
    torch.backends.cudnn.benchmark, matmul.allow_tf32 = saved


def test_cuda_device_turns_on_cudnn_autotuning_and_tf32_only_for_cuda(monkeypatch, cuda_flags):
    assert runtime.resolve_device("cpu") == torch.device("cpu")
    assert not torch.backends.cudnn.benchmark and not torch.backends.cuda.matmul.allow_tf32
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert runtime.resolve_device("cuda:1") == torch.device("cuda", 1)
    assert torch.backends.cudnn.benchmark and torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.benchmark = False
    assert runtime.resolve_device("auto") == torch.device("cuda")
    assert torch.backends.cudnn.benchmark
    mkldnn = getattr(torch.backends.mkldnn, "matmul", None)  # CPU matmuls keep full fp32
    assert mkldnn is None or mkldnn.fp32_precision != "tf32"
