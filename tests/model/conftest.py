"""Fixtures of the TMFModel tests: defined in tmf_testkit.py, shared with tests/training."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path


def load_testkit():
    """Import tests/model/tmf_testkit.py once (the suite runs with --import-mode=importlib)."""
    if "tmf_testkit" not in sys.modules:
        path = Path(__file__).resolve().parent / "tmf_testkit.py"
        spec = importlib.util.spec_from_file_location("tmf_testkit", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules["tmf_testkit"] = module
        spec.loader.exec_module(module)
    return sys.modules["tmf_testkit"]


kit = load_testkit()
tokenizer, tiny_lm_dir, shop, tables = kit.tokenizer, kit.tiny_lm_dir, kit.shop, kit.tables
