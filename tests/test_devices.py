"""llmrec.devices: precision resolution and the machine line printed beside every benchmark figure."""

import pytest
import torch

from llmrec.devices import KERNEL_VARIABLES, describe_machine, kernel_settings, machine_description, resolve_precision


def test_resolve_precision_keeps_explicit_choices_and_rejects_unknown():
    assert resolve_precision("fp32", "cpu") == "fp32"
    assert resolve_precision("bf16", "cpu") == "bf16"
    assert resolve_precision("auto", "cpu") in ("fp32", "bf16")
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("fp8", "cpu")


def test_machine_description_names_this_cpu_and_torch():
    info = machine_description()
    assert info["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert info["torch"] == torch.__version__
    assert info["cores"] >= 1 and info["cpu"]


def test_describe_machine_states_bf16_support_and_gpu():
    info = {"cpu": "Test CPU", "cpu_capability": "AVX2", "cpu_native_bf16": False, "cores": 2, "torch": "2.x",
            "gpu": None}
    assert describe_machine(info) == "Test CPU (AVX2, no native bf16), 2 cores, torch 2.x"
    line = describe_machine(info | {"cpu_capability": "AVX512", "cpu_native_bf16": True, "gpu": "NVIDIA H200"})
    assert line == "Test CPU (AVX512, native bf16), 2 cores, torch 2.x, GPU NVIDIA H200"


def test_kernel_settings_record_the_capability_and_only_the_variables_that_are_set(monkeypatch):
    for name in KERNEL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert kernel_settings() == {"cpu_capability": torch.backends.cpu.get_cpu_capability(), "kernel_variables": {}}
    monkeypatch.setenv("MKL_ENABLE_INSTRUCTIONS", "AVX2")
    assert kernel_settings()["kernel_variables"] == {"MKL_ENABLE_INSTRUCTIONS": "AVX2"}
