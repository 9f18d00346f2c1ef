"""bench/dreamrec_inputs_probe.py's Eq. 22 diagnostic on a tiny DreamRec whose projection is set by hand."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import torch

from graph_encoders.batching import SequenceBatcher

from .test_dreamrec import TINY, build

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("dreamrec_inputs_probe", ROOT / "bench" / "dreamrec_inputs_probe.py")
probe = importlib.util.module_from_spec(spec)
spec.loader.exec_module(probe)


def test_projection_units_count_units_that_never_fire(tiny_dataset):
    model = build(tiny_dataset).eval()
    d = TINY["hidden_size"]
    with torch.no_grad():  # W = 0: unit j outputs ReLU(b_j), dead for b_j < 0, exactly 1 for b_j = 1
        model.projection.weight.zero_()
        model.projection.bias.copy_(torch.tensor([-1.0] * 4 + [1.0] * (d - 4)))
        units = probe.projection_units(model, SequenceBatcher(tiny_dataset, TINY["max_len"]), "test")
    assert units["units"] == d and units["positions"] > 0
    assert units["never_firing"] == 4 and units["firing_under_1pct"] == 4
    assert math.isclose(units["zero_output_share"], 4 / d)
    assert math.isclose(units["mean_norm_projected"], math.sqrt(d - 4), rel_tol=1e-6)
    assert units["mean_norm_behavior"] > 0
