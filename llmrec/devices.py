"""Devices and precision: where tensors go and which autocast dtype a machine supports.

``precision`` is one of ``auto | fp32 | bf16 | fp16`` everywhere (training and inference configs). ``auto``
means bf16 where the hardware runs it natively (a CUDA GPU with bf16, a CPU with AVX512-BF16 or AMX, as
oneDNN reports), else fp32: on a CPU without native bf16, autocast to bf16 is emulated and slower than fp32.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import torch


def batch_to_device(batch: dict[str, Any], device: torch.device | str) -> dict[str, Any]:
    """The batch with every tensor moved to ``device`` (other values as they are)."""
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def native_bf16(device: torch.device | str = "cpu") -> bool:
    """Whether ``device`` computes in bf16 natively (CUDA: ``is_bf16_supported``; CPU: oneDNN's bf16 check)."""
    if torch.device(device).type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """``precision`` with ``auto`` resolved for ``device``: ``bf16`` where native, else ``fp32``."""
    if precision not in ("auto", "fp32", "bf16", "fp16"):
        raise ValueError(f"precision must be one of auto, fp32, bf16, fp16; got {precision!r}")
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


def autocast_dtype(precision: str, device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype of ``precision`` on ``device`` (None: plain fp32)."""
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[resolve_precision(precision, device)]


# environment variables that limit the instruction set of torch's, oneDNN's and MKL's kernels: they change the
# floats a run computes (an AVX512 machine with all three at AVX2 repeats an AVX2 machine's run; docs/RESULTS.md)
KERNEL_VARIABLES = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")


def kernel_settings() -> dict[str, Any]:
    """torch's CPU capability in use and the kernel-limiting variables that are set (what a run's floats depend on)."""
    return {"cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "kernel_variables": {name: os.environ[name] for name in KERNEL_VARIABLES if name in os.environ}}


def machine_description() -> dict[str, Any]:
    """What a timing was measured on: CPU model, torch's CPU capability, bf16 support, cores, GPU if any."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:  # not Linux: platform's answer stands
        pass
    return {"cpu": model, "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu_native_bf16": native_bf16(),
            "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def describe_machine(info: dict[str, Any] | None = None) -> str:
    """One line naming the machine, for benchmark tables: ``Intel Xeon ... (AVX512, native bf16), 2 cores``."""
    info = info or machine_description()
    bf16 = "native bf16" if info["cpu_native_bf16"] else "no native bf16"
    line = f"{info['cpu']} ({info['cpu_capability']}, {bf16}), {info['cores']} cores, torch {info['torch']}"
    return line + (f", GPU {info['gpu']}" if info.get("gpu") else "")
