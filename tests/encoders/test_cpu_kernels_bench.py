"""bench/cpu_kernels.py: the table comparison, the kernel variables each setting runs with, and one real run
(three ``llmrec encode`` processes with MiniLM on the tiny shop's catalog)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import tmf_testkit as kit  # registered by tests/conftest.py
import torch
import yaml

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("cpu_kernels_bench", ROOT / "bench" / "cpu_kernels.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_compare_tables_counts_the_rows_that_differ():
    a = torch.zeros(4, 3)
    b = a.clone()
    assert bench.compare_tables(a, b) == {"identical": True, "max_abs_diff": 0.0, "rows_differing": 0, "rows": 4}
    b[1, 2], b[3, 0] = 2e-7, -1e-3
    result = bench.compare_tables(a, b)
    assert not result["identical"] and result["rows_differing"] == 2 and result["max_abs_diff"] == pytest.approx(1e-3)
    with pytest.raises(ValueError, match="different shapes"):
        bench.compare_tables(a, torch.zeros(4, 2))


def test_native_drops_kernel_variables_the_caller_had_set():
    base = {"PATH": "/bin", "ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
    assert bench.setting_env(base, bench.SETTINGS["native"]) == {"PATH": "/bin"}
    assert bench.setting_env(base, bench.SETTINGS["avx2"]) == {"PATH": "/bin", **bench.AVX2_ONLY}


def test_every_setting_encodes_and_every_pair_is_compared(tmp_path):
    data = kit.write_shop_data_config(tmp_path / "data.yaml", "cpu-kernels-shop", tmp_path / "cache")
    config = tmp_path / "encode.yaml"
    config.write_text(yaml.safe_dump({"data": str(data), "progress": False, "image": {"kind": "none"},
                                      "text": {"kind": "sentence_transformer", "model": None,
                                               "template": ["{title}"]}}))
    out = tmp_path / "out"
    assert bench.main(["--config", str(config), "--out", str(out), "--tables", str(tmp_path / "tables")]) == 0
    report = json.loads((out / "cpu_kernels.json").read_text())
    assert [(p["a"], p["b"]) for p in report["pairs"]] == [("native", "aten_avx2"), ("native", "avx2"),
                                                          ("aten_avx2", "avx2")]
    assert all(p["rows"] > 0 and p["max_abs_diff"] < 1e-4 for p in report["pairs"])  # rounding, not another model
    assert all(len(list((tmp_path / "tables" / name).glob("*.safetensors"))) == 1 for name in bench.SETTINGS)
    assert not (out / "tables").exists()  # derived from the data: kept out of the report folder
    assert "| native | avx2 |" in (out / "cpu_kernels.md").read_text()
