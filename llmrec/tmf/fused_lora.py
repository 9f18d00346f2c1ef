"""A cheaper forward for PEFT's LoRA ``Linear`` layers: same function, less elementwise work.

PEFT computes ``base(x) + lora_B(lora_A(dropout(x))) * scaling``. The scaling multiplies the full-width
output (``[tokens, out_features]``) and the sum is another full-width pass, each again in the backward pass;
under bf16 autocast the input is also cast to bf16 twice (once for the base layer, once for ``lora_A``). On a
CPU these elementwise passes cost as much as a large share of the matrix products (docs/training.md
"Throughput"). The fused forward computes the same function as

    h = (dropout(x) @ A^T) * scaling          # the scaling on the rank-r activations
    y = (x @ W^T + b).addmm_(h, B^T)           # the sum inside the second matrix product, in place

with the input cast once, and the frozen base weight cast to the autocast dtype once and kept (not in every pass).
In fp32 it matches PEFT's output to rounding (the products are associated
differently); in bf16 both round at other places, so losses differ in the third or fourth digit (tested).
Parameters, their names and the saved adapter are PEFT's own: only ``forward`` of each layer changes.

PEFT's own forward still runs whenever the fused one would not compute the same thing: adapters disabled or
merged, per-call arguments (``adapter_names``: mixed-adapter batches), several active adapters, a LoRA variant
(DoRA), a quantized base layer (QLoRA: only exact ``peft.tuners.lora.layer.Linear`` over ``nn.Linear`` is
patched), and DeepSpeed ZeRO-3 partitioned weights (their gather hooks run only when the submodules are called).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from peft.tuners.lora.layer import Linear as LoraLinear
from torch import nn

__all__ = ["FusedLoraLinear", "fuse_lora_linears"]


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype


def _partitioned(*tensors: torch.Tensor) -> bool:
    """DeepSpeed ZeRO-3 marks its partitioned parameters with ``ds_id``."""
    return any(hasattr(t, "ds_id") for t in tensors)


class FusedLoraLinear(LoraLinear):
    """PEFT's LoRA ``Linear`` with the fused forward; layers become one by a class swap (:func:`fuse_lora_linears`),
    so parameters, state-dict names, ``isinstance`` checks, merging and deep copies stay PEFT's."""

    keep_cast_weights = True  # set per layer by fuse_lora_linears (model.lora.keep_cast_weights)
    _base_weight_cast: tuple[tuple, torch.Tensor] | None = None  # (key, the frozen base weight in the autocast dtype)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        adapters = self.active_adapters
        if (args or kwargs or self.disable_adapters or self.merged or len(adapters) != 1
                or adapters[0] not in self.lora_A or adapters[0] in self.lora_variant):
            return super().forward(x, *args, **kwargs)
        name = adapters[0]
        base = self.base_layer
        a, b = self.lora_A[name].weight, self.lora_B[name].weight
        if _partitioned(base.weight, a, b):
            return super().forward(x, *args, **kwargs)
        dtype = _compute_dtype(x)
        dropped = self.lora_dropout[name](x)
        x_base = x.to(dtype)
        x_lora = x_base if dropped is x else dropped.to(dtype)
        bias = None if base.bias is None else base.bias.to(dtype)
        with torch.autocast(x.device.type, enabled=False):  # every operand is already in the compute dtype
            flat = F.linear(x_base.reshape(-1, x.shape[-1]), self._base_weight_in(dtype), bias)
            h = F.linear(x_lora.reshape(-1, x.shape[-1]), a.to(dtype)) * self.scaling[name]
            # in place: the linear's backward keeps its input and weight, not its output
            flat.addmm_(h, b.to(dtype).t())
        return flat.view(*x.shape[:-1], flat.shape[-1])

    def _base_weight_in(self, dtype: torch.dtype) -> torch.Tensor:
        """The frozen base weight in ``dtype``, cast once and kept (bf16 autocast would otherwise cast every
        layer's weight again in every forward pass: ~0.6 GB of reads and writes per pass over SmolLM2-135M).

        The copy is rebuilt when the weight changes in place (``_version``: merging, loading) or moves
        (``data_ptr``, device). A weight that trains, or is already in ``dtype``, is used as before. The copy is a
        plain attribute, not a buffer: it is not saved, and costs ``dtype``'s bytes per base weight in memory."""
        weight = self.base_layer.weight
        if weight.dtype == dtype or weight.requires_grad or not self.keep_cast_weights:
            return weight.to(dtype)
        key = (dtype, weight.device, weight.data_ptr(), weight._version)
        if self._base_weight_cast is None or self._base_weight_cast[0] != key:
            with torch.inference_mode(False):  # a copy made during evaluation must serve training too
                self._base_weight_cast = (key, weight.detach().to(dtype))
        return self._base_weight_cast[1]


def fuse_lora_linears(model: nn.Module, keep_cast_weights: bool = True) -> int:
    """Turn every plain LoRA ``Linear`` of ``model`` (over an ``nn.Linear``) into a :class:`FusedLoraLinear`
    (``keep_cast_weights``: keep each frozen base weight's autocast copy between passes); returns how many."""
    count = 0
    for module in model.modules():
        if type(module) is LoraLinear and type(module.base_layer) is nn.Linear:
            module.__class__ = FusedLoraLinear
            module.keep_cast_weights = keep_cast_weights
            count += 1
    return count
