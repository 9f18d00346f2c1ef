"""``lm.compile_elementwise``: the Llama decoder's elementwise chains run as ``torch.compile`` kernels.

Each Llama block runs two RMSNorms (square, mean, rsqrt, two products, dtype casts) and the SiLU gate of its MLP
(``silu(gate) * up``) as separate PyTorch operations, each reading and writing whole ``[tokens, width]`` tensors,
forward and backward. Compiled (inductor, ``dynamic=True`` so that every sequence length shares one kernel), each
chain is one pass. Only these two small functions are compiled, not the model: compiling takes seconds, not
minutes, and the matrix products, attention and PEFT's layers stay as they are. Measured on this repository's
CPU (docs/training.md "Throughput"): training steps 1.065x faster in bf16 autocast, 1.04x in fp32.

Only the exact ``LlamaRMSNorm`` / ``LlamaMLP`` classes (SmolLM2, Llama-2) are swapped for the subclasses below
(class swap: parameters, names and checkpoints are unchanged); other architectures keep their own layers. The
compiled functions compute the same formulas; fp32 results agree with the eager ones to rounding, bf16 ones round
once where eager rounds after every operation. If compiling fails (no C++ compiler, for example), a warning is
logged and the eager formulas run for the rest of the process.

Off by default, and off in the recipes, for one hazard found while measuring (torch 2.14.1): inductor's kernel
cache (``/tmp/torchinductor_<user>``) does not tell apart kernels built under another ``ATEN_CPU_CAPABILITY``
(the AVX2 stand-in of docs/training.md). A run after one with the other setting loaded the other's kernels and
trained on NaN losses, or died with "double free or corruption"; with a cache of its own
(``TORCHINDUCTOR_CACHE_DIR``) each was correct. A warning is logged when ``ATEN_CPU_CAPABILITY`` is set and
``TORCHINDUCTOR_CACHE_DIR`` is not.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.llama.modeling_llama import LlamaMLP, LlamaRMSNorm

logger = logging.getLogger(__name__)
__all__ = ["CompiledLlamaMLP", "CompiledLlamaRMSNorm", "compile_elementwise"]


def rms_norm(hidden: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """LlamaRMSNorm's formula: normalise in fp32, cast back, scale."""
    dtype = hidden.dtype
    hidden = hidden.float()
    hidden = hidden * torch.rsqrt(hidden.pow(2).mean(-1, keepdim=True) + eps)
    return weight * hidden.to(dtype)


def silu_gate(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return F.silu(gate) * up


class _Compiled:
    """``fn`` compiled on first use; on a compile error, the eager ``fn`` from then on (warned once)."""

    def __init__(self, fn: Callable[..., torch.Tensor]) -> None:
        self.eager = fn
        self.compiled: Callable[..., torch.Tensor] | None = None
        self.failed = False

    def __call__(self, *args):
        if self.failed:
            return self.eager(*args)
        if self.compiled is None:
            self.compiled = torch.compile(self.eager, dynamic=True)
        try:
            return self.compiled(*args)
        except Exception as err:  # noqa: BLE001  (inductor's errors have no common base class)
            self.failed = True
            logger.warning("compile_elementwise: torch.compile of %s failed (%s: %s); running it eagerly",
                           self.eager.__name__, type(err).__name__, str(err).splitlines()[0] if str(err) else "")
            return self.eager(*args)


_RMS_NORM = _Compiled(rms_norm)
_SILU_GATE = _Compiled(silu_gate)


class CompiledLlamaRMSNorm(LlamaRMSNorm):
    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return _RMS_NORM(hidden_states, self.weight, self.variance_epsilon)


class CompiledLlamaMLP(LlamaMLP):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(_SILU_GATE(self.gate_proj(x), self.up_proj(x)))


def compile_elementwise(model: nn.Module) -> int:
    """Swap every exact ``LlamaRMSNorm`` and SiLU ``LlamaMLP`` of ``model`` for its compiled subclass; returns how
    many modules were swapped."""
    if os.environ.get("ATEN_CPU_CAPABILITY") and not os.environ.get("TORCHINDUCTOR_CACHE_DIR"):
        logger.warning("compile_elementwise with ATEN_CPU_CAPABILITY=%s and inductor's shared kernel cache: kernels "
                       "cached under another CPU capability get reused (NaN losses or a crash seen with torch 2.14); "
                       "set TORCHINDUCTOR_CACHE_DIR to a folder for this capability", os.environ["ATEN_CPU_CAPABILITY"])
    count = 0
    for module in model.modules():
        if type(module) is LlamaRMSNorm:
            module.__class__ = CompiledLlamaRMSNorm
            count += 1
        elif type(module) is LlamaMLP and getattr(module.config, "hidden_act", None) == "silu":
            module.__class__ = CompiledLlamaMLP
            count += 1
    return count
