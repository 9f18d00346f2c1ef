"""bench/train_ops.py: its operator groups and its thin-product test read torch.profiler's real output."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

BENCH = Path(__file__).resolve().parents[2] / "bench"


def test_groups_and_thin_products_from_a_real_profile(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))  # train_ops imports its neighbour train_throughput as the scripts do
    sys.modules.pop("train_ops", None)
    import train_ops

    x, w, a = torch.randn(30, 16), torch.randn(16, 24), torch.randn(16, 8)
    q = k = v = torch.randn(1, 2, 10, 8)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        x @ w  # a full-width product
        x @ a  # a rank-8 (LoRA-like) product
        F.scaled_dot_product_attention(q, k, v, is_causal=True)
        torch.relu(x)
    shapes = {str(e.input_shapes): e.key for e in prof.key_averages(group_by_input_shape=True) if e.key == "aten::mm"}
    thin = [s for s in shapes if train_ops.is_thin(s, 8)]
    assert thin == ["[[30, 16], [16, 8]]"]
    assert not train_ops.is_thin("[[30, 16], [16, 24]]", 8) and "[[30, 16], [16, 24]]" in shapes
    groups = {e.key: train_ops.group_of(e.key) for e in prof.key_averages()}
    assert groups["aten::mm"] == "matmul"
    assert any(g == "attention" for k, g in groups.items() if "attention" in k)
    assert groups["aten::relu"] == "elementwise / other"
    assert train_ops.group_of("aten::_foreach_addcdiv_") == "optimizer"
